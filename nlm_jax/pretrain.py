r"""Pre-trains a nucleotide BERT with masked language modelling.

  python -m nlm_jax.pretrain TRAIN.fasta VALID.fasta --flagfile=launch/conv.flags

TRAIN.fasta holds the pre-training sequences, VALID.fasta those that measure the model
after every epoch. The flags below are lncRNA-Py's pretrain flags, with the same names,
meanings and defaults, and a few of nlm_jax's own (--seed, --fresh, ...). Re-running the
same command resumes the run. This entry point is intentionally kept short:
flags -> Config -> train.run(cfg).
"""

import sys

from absl import app
from absl import flags

from nlm_jax import allocator
from nlm_jax import cli
from nlm_jax import command
from nlm_jax import config

config.define_flags()
flags.adopt_module_key_flags(config)
FLAGS = flags.FLAGS
PROG = "nlm_jax.pretrain"


def main(argv: list[str]) -> None:
  with cli.one_line_errors(PROG, "--batch_size (or --context_length)"):
    cfg = command.from_flags(FLAGS, argv[1:])
    from nlm_jax import train  # after validation: importing JAX takes a second or two

    train.use_compilation_cache(FLAGS.compilation_cache)

    if FLAGS.distributed:
      train.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                   FLAGS.process_id)

    cli.quiet_libraries()

    try:
      train.run(cfg)
    except train.Stopped as e:  # SIGTERM, Ctrl-C in the training steps, a non-finite loss
      print(f"{PROG}: {e}", file=sys.stderr)
      sys.exit(e.status)
    except KeyboardInterrupt:  # Ctrl-C outside the training steps (set-up, compilation)
      print(f"{PROG}: interrupted (Ctrl-C); every checkpoint saved so far is whole: run the "
            "same command to go on from the last one.", file=sys.stderr)
      sys.exit(130)


if __name__ == "__main__":
  allocator.preload()  # re-executes this command with mimalloc, before JAX loads
  app.run(main, flags_parser=cli.flags_parser(PROG))
