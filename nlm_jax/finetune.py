r"""Fine-tunes a pre-trained nucleotide BERT (or trains one from scratch) to tell
protein-coding RNAs (pcRNA) from non-coding ones (ncRNA): lncRNA-Py's `train` script.

  python -m nlm_jax.finetune PC_TRAIN NC_TRAIN PC_VALID NC_VALID \
      --pretrained_model models/MLM_... [--flagfile=launch/finetune_conv.flags]

Flags (--help): the same names, meanings and defaults as lncRNA-Py's train script, and
nlm_jax's own. --pretrained_model also takes a Hugging Face hub id.
This entry point is intentionally kept short: flags -> Config -> train.run(cfg), the loop
that pre-training uses.
"""

from absl import app
from absl import flags

from nlm_jax import allocator
from nlm_jax import cli
from nlm_jax import command
from nlm_jax import config

config.define_flags(task="cls")
flags.adopt_module_key_flags(config)
FLAGS = flags.FLAGS
PROG = "nlm_jax.finetune"


def main(argv: list[str]) -> None:
  command.train(PROG, FLAGS, argv, command.from_finetune_flags)


if __name__ == "__main__":
  allocator.preload()  # re-executes this command with mimalloc, before JAX loads
  cli.exit_without_collecting()
  app.run(main, flags_parser=cli.flags_parser(PROG, config.HELP_GROUPS))
