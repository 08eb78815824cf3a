"""The Config of a command line: the flags (config.py) completed from the files they name,
the architecture of an --init_from or --pretrained_model folder (folders.py) and the
vocabulary size of a --bpe_file (encodings.py). Here, above all three, so that the
configuration itself imports none of them. `train` runs the command: the body that
`pretrain` and `finetune` share.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, Callable

from absl import flags

from nlm_jax import cli
from nlm_jax.config import Config
from nlm_jax.errors import UserError


def from_flags(fv: flags.FlagValues, positional: list[str]) -> Config:
  """Builds and validates the Config from parsed flags and the positional FASTA paths."""
  if len(positional) != 2:
    raise UserError(f"expected two FASTA paths (fasta_train fasta_valid), got {len(positional)}: "
                    f"{' '.join(positional) or 'none'}. Usage: python -m nlm_jax.pretrain TRAIN.fasta "
                    "VALID.fasta [--flagfile=launch/conv.flags]")
  names = [f.name for f in dataclasses.fields(Config)]
  values: dict[str, Any] = {n: fv[n].value for n in names if n in fv}
  cfg = Config(fasta_train=positional[0], fasta_valid=positional[1], **values)
  if cfg.init_from:  # the architecture comes from that folder
    from nlm_jax import folders

    cfg = folders.with_architecture_of(cfg.init_from, cfg, {n for n in names if n in fv and fv[n].present})
  cfg = cfg.validate()
  if cfg.encoding_method == "bpe":  # the vocabulary size is part of the experiment name
    from nlm_jax import encodings

    vocab = encodings.BpeTokenizer(cfg.bpe_path, cfg.context_length).vocab_size
    cfg = dataclasses.replace(cfg, bpe_vocab_size=vocab)
  return cfg


def from_finetune_flags(fv: flags.FlagValues, positional: list[str]) -> Config:
  """The fine-tuning Config (task "cls") from the flags of define_flags(task="cls") and
  the four FASTA paths. With --pretrained_model the architecture is the model's, as with
  pre-training's --init_from: a flag given with another value is an error."""
  if len(positional) != 4:
    raise UserError(f"expected four FASTA paths (pcRNA train, ncRNA train, pcRNA valid, ncRNA "
                    f"valid), got {len(positional)}: {' '.join(positional) or 'none'}. Usage: python "
                    "-m nlm_jax.finetune PC_TRAIN NC_TRAIN PC_VALID NC_VALID [--pretrained_model DIR]")
  names = [f.name for f in dataclasses.fields(Config)]
  values: dict[str, Any] = {n: fv[n].value for n in names if n in fv}
  try:
    values["hidden_cls_layers"] = tuple(int(n) for n in fv["hidden_cls_layers"].value)
  except ValueError:
    raise UserError(f"--hidden_cls_layers takes comma-separated numbers of nodes, e.g. 256,128; got "
                    f"{','.join(fv['hidden_cls_layers'].value)}.") from None
  pc_train, nc_train, pc_valid, nc_valid = positional
  cfg = Config(fasta_train=pc_train, fasta_valid=pc_valid, task="cls", fasta_nc_train=nc_train,
               fasta_nc_valid=nc_valid, **values)
  if cfg.pretrained_model:
    from nlm_jax import folders

    given = {n for n in names if n in fv and fv[n].present}
    cfg = folders.with_architecture_of(cfg.pretrained_model, cfg, given, "--pretrained_model")
  cfg = cfg.validate()
  if cfg.encoding_method == "bpe" and cfg.bpe_vocab_size is None:
    from nlm_jax import encodings

    vocab = encodings.BpeTokenizer(cfg.bpe_path, cfg.context_length).vocab_size
    cfg = dataclasses.replace(cfg, bpe_vocab_size=vocab)
  return cfg


def train(prog: str, fv: flags.FlagValues, argv: list[str],
          to_config: Callable[[flags.FlagValues, list[str]], Config]) -> None:
  """The main of `pretrain` and `finetune`: flags -> Config -> train.run(cfg), where every
  way the run can stop (bad input, out of memory, SIGTERM, Ctrl-C) ends in one line."""
  with cli.one_line_errors(prog, "--batch_size (or --context_length)"):
    from nlm_jax import filecache

    filecache.use_folder(fv.fasta_index)
    cfg = to_config(fv, argv[1:])
    from nlm_jax import train as train_lib  # after validation: importing JAX takes seconds

    train_lib.use_compilation_cache(fv.compilation_cache)
    if fv.distributed:
      train_lib.initialize_distributed(fv.coordinator_address, fv.num_processes, fv.process_id)
    else:
      train_lib.use_cpu_devices(fv.cpu_devices, cfg)
    cli.quiet_libraries()
    try:
      train_lib.run(cfg)
    except train_lib.Stopped as e:  # SIGTERM, Ctrl-C in the training steps, a non-finite loss
      print(f"{prog}: {e}", file=sys.stderr)
      sys.exit(e.status)
    except KeyboardInterrupt:  # Ctrl-C outside the training steps (set-up, compilation)
      print(f"{prog}: interrupted (Ctrl-C); every checkpoint saved so far is whole: run the "
            "same command to go on from the last one.", file=sys.stderr)
      sys.exit(130)
