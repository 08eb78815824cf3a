r"""Pre-trains a nucleotide BERT with masked language modelling.

  python -m nlm_jax.pretrain TRAIN.fasta VALID.fasta --flagfile=launch/conv.flags

Flags: see `--helpfull` or ../shared/spec/pretrain-cli.md. This entry point is
intentionally kept short: flags -> Config -> train.run(cfg).
"""

import logging
import sys

from absl import app
from absl import flags
from absl import logging as absl_logging

from nlm_jax import config

config.define_flags()
flags.adopt_module_key_flags(config)
FLAGS = flags.FLAGS


def fail(message: str) -> None:
  """Bad input ends in one line on stderr and exit status 2, never a traceback."""
  print(f"nlm_jax.pretrain: error: {message}", file=sys.stderr)
  sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
  try:
    return FLAGS(argv)
  except flags.Error as e:
    fail(f"{str(e).replace('ERROR:: ', '')} (see --helpfull for every flag).")


def main(argv: list[str]) -> None:
  try:
    cfg = config.from_flags(FLAGS, argv[1:])
    from nlm_jax import train  # after validation: importing JAX takes a second or two

    if FLAGS.distributed:
      train.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                   FLAGS.process_id)

    # Progress lines from nlm_jax; from the libraries (orbax is chatty) warnings only.
    absl_logging.get_absl_handler().addFilter(
        lambda r: r.levelno >= logging.WARNING or "nlm_jax" in r.pathname)

    try:
      train.run(cfg)
    except train.Stopped as e:
      print(f"nlm_jax.pretrain: {e}", file=sys.stderr)
      sys.exit(3)
  except config.UserError as e:
    fail(str(e))


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
