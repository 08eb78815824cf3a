"""The Config of a command line: the flags (config.py) completed from the files they name,
the architecture of an --init_from or --pretrained_model folder (folders.py) and the
vocabulary size of a --bpe_file (encodings.py). Here, above all three, so that the
configuration itself imports none of them. `train` runs the command: the body that
`pretrain` and `finetune` share.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
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

    cfg = dataclasses.replace(cfg, init_from=_local_folder(cfg.init_from, "--init_from"))
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

    cfg = dataclasses.replace(cfg, pretrained_model=_local_folder(cfg.pretrained_model,
                                                                  "--pretrained_model"))
    given = {n for n in names if n in fv and fv[n].present}
    cfg = folders.with_architecture_of(cfg.pretrained_model, cfg, given, "--pretrained_model")
  cfg = cfg.validate()
  if cfg.encoding_method == "bpe" and cfg.bpe_vocab_size is None:
    from nlm_jax import encodings

    vocab = encodings.BpeTokenizer(cfg.bpe_path, cfg.context_length).vocab_size
    cfg = dataclasses.replace(cfg, bpe_vocab_size=vocab)
  return cfg


def _local_folder(name: str, flag: str) -> str:
  """The folder `name` names: itself, or a Hugging Face hub id's snapshot (hub.py), which
  the run's config then keeps."""
  from nlm_jax import hub

  try:
    return hub.resolve(name)
  except UserError as e:
    raise UserError(f"{flag}: {e}") from None


def check_data(cfg: Config) -> None:
  """What the run's FASTA files hold, before anything starts (the index that opening them
  builds serves the run): nucleotides, and for a classifier two sets that differ."""
  from nlm_jax import fasta as fasta_lib

  if cfg.is_classifier:
    paths = {"pcRNA training": cfg.train_path, "ncRNA training": cfg.nc_train_path,
             "pcRNA validation": cfg.valid_path, "ncRNA validation": cfg.nc_valid_path}
  else:
    paths = {"training": cfg.train_path, "validation": cfg.valid_path}
  files = {}
  for what, path in paths.items():
    if cfg.data_dir and not os.path.lexists(path):
      raise UserError(f"{what} FASTA {path!r} does not exist: check the path and --data_dir.")
    files[what] = fasta_lib.Fasta(path, what, random_access=cfg.is_classifier)
    fasta_lib.check_alphabet(files[what], what)
  for split in ("training", "validation") if cfg.is_classifier else ():
    pc, nc = files[f"pcRNA {split}"], files[f"ncRNA {split}"]
    share = fasta_lib.shared_share(pc, nc)
    if share > 0.5:
      same = ("are the same file" if pc.identity == nc.identity else
              f"share {share:.0%} of their sequences (of the smaller set, sampled)")
      raise UserError(f"the pcRNA and ncRNA {split} FASTA files {pc.path!r} and {nc.path!r} "
                      f"{same}: a classifier cannot learn to tell a set from itself. Pass the "
                      "protein-coding and the non-coding sequences.")


def check_parameters_fit(cfg: Config) -> None:
  """The model's parameters, with their gradients and Adam's two moments (16 bytes each),
  must fit in a device's memory: else one line naming the flags that shape them (XLA's own
  out-of-memory error would blame the batch)."""
  import jax

  from nlm_jax import model as model_lib

  n = sum(x.size for x in jax.tree.leaves(model_lib.abstract_params(cfg)))
  device = jax.local_devices()[0]
  need, have = 16 * n, model_lib.device_memory(device)
  if need > have:
    raise UserError(f"the model's {n:,} parameters need {need / 2**30:,.1f} GiB with their "
                    f"gradients and the optimizer's state, more than the {have / 2**30:,.1f} GiB "
                    f"of {device.platform} memory: lower --d_model, --N or --d_ff"
                    f"{' (or --k)' if cfg.encoding_method == 'kmer' else ''}.")


def train(prog: str, fv: flags.FlagValues, argv: list[str],
          to_config: Callable[[flags.FlagValues, list[str]], Config]) -> None:
  """The main of `pretrain` and `finetune`: flags -> Config -> train.run(cfg), where every
  way the run can stop (bad input, out of memory, SIGTERM, Ctrl-C) ends in one line. Every
  input is checked before the run writes anything: flags, FASTA files, JAX's environment,
  the model folder it starts from."""
  with cli.one_line_errors(prog, "--batch_size (or --context_length)"):
    from nlm_jax import filecache

    filecache.use_folder(fv.fasta_index)
    cfg = to_config(fv, argv[1:])
    check_data(cfg)
    cli.import_jax()
    from nlm_jax import train as train_lib  # after validation: importing JAX takes seconds

    train_lib.use_compilation_cache(fv.compilation_cache)
    if fv.distributed:
      train_lib.initialize_distributed(fv.coordinator_address, fv.num_processes, fv.process_id)
    else:
      train_lib.use_cpu_devices(fv.cpu_devices, cfg)
    cli.quiet_libraries()  # JAX logs the backends it tried at the start
    cli.start_jax()
    check_parameters_fit(cfg)
    source = cfg.init_from or cfg.pretrained_model
    if source:  # read whole before anything is written (train.run reads it again)
      from nlm_jax import folders

      try:
        folders.read_params(source, dataclasses.replace(cfg, task="mlm"))
      except UserError as e:
        raise UserError(f"--{'init_from' if cfg.init_from else 'pretrained_model'}: {e}") from None
    go_on = "run the same command to go on"
    if cfg.fresh:  # the same command would start anew once more
      go_on = f"run the same command without --fresh to go on ({go_on_command(prog, sys.argv[1:])})"
    try:
      train_lib.run(cfg)
    except train_lib.Stopped as e:  # SIGTERM, Ctrl-C in the training steps, a non-finite loss
      message = str(e).replace("run the same command to go on", go_on)
      if cfg.is_classifier:  # train.py words its advice for pre-training
        message = message.replace("a longer --warmup_steps", "a lower --learning_rate")
      print(f"{prog}: {message}", file=sys.stderr)
      sys.exit(e.status)
    except (KeyboardInterrupt, cli.Interrupted) as e:  # outside the training steps
      how = f"stopped by {e}" if isinstance(e, cli.Interrupted) else "interrupted (Ctrl-C)"
      print(f"{prog}: {how}; every checkpoint saved so far is whole: {go_on} from the last one.",
            file=sys.stderr)
      sys.exit(getattr(e, "status", 130))


_FRESH = re.compile(r"--?fresh(=\S*)?")


def go_on_command(prog: str, args: list[str]) -> str:
  """The command line that goes on with a run started with --fresh: the same, without
  --fresh (with --nofresh where --fresh came from a flagfile)."""
  kept = [a for a in args if not _FRESH.fullmatch(a)]
  if len(kept) == len(args):
    kept.append("--nofresh")
  return f"python -m {prog} {shlex.join(kept)}"
