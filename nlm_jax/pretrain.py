r"""Pre-trains a nucleotide BERT with masked language modelling.

  python -m nlm_jax.pretrain TRAIN.fasta VALID.fasta --flagfile=launch/conv.flags

TRAIN.fasta holds the pre-training sequences, VALID.fasta those that measure the model
after every epoch. The flags below are lncRNA-Py's pretrain flags, with the same names,
meanings and defaults, and a few of nlm_jax's own (--seed, --fresh, ...). Re-running the
same command resumes the run. This entry point is intentionally kept short:
flags -> Config -> train.run(cfg).
"""

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
  command.train(PROG, FLAGS, argv, command.from_flags)


if __name__ == "__main__":
  allocator.preload()  # re-executes this command with mimalloc, before JAX loads
  cli.exit_without_collecting()
  app.run(main, flags_parser=cli.flags_parser(PROG, config.HELP_GROUPS))
