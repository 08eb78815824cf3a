r"""Exports a pre-trained model to safetensors, in lncRNA-Py's layout (layout.py), so the
weights load outside JAX; folders.py reads such folders back.

  python -m nlm_jax.export MODEL_DIR OUT_DIR [--overwrite]

MODEL_DIR is a pre-training or fine-tuning folder (model_dir/exp_name); its best
checkpoint is exported. OUT_DIR receives:
  model.safetensors  float32 tensors named and laid out as lncRNA-Py's MaskedConvModel /
                     MaskedTokenModel / Classifier name them (the Classifier's head is
                     `hidden_layers.{i}` and `output`), in PyTorch layouts: Linear weights
                     (out, in), Conv1d (n_kernels, 4, ks), ConvTranspose1d (C, 4, ks);
                     the sinusoidal table as `...pe`
  config.json        lncRNA-Py's constructor arguments of that model
  nlm_jax.json       the nlm_jax configuration: `nlm_jax.load(OUT_DIR)` reads the folder
  tokenizer.bpe      the BPE model, for BPE encodings

Key names and shapes follow lncRNA-Py, so `MaskedConvModel.from_pretrained(OUT_DIR)`
should load the folder (not tried here: no PyTorch). lncRNA-Py's conv head only builds
when d_model == n_kernels (its channel bug); nlm_jax's exports of other shapes load in
nlm_jax and any safetensors reader.
"""

from __future__ import annotations

import json
import os
import shutil
import numpy as np
from absl import flags

from nlm_jax import cli
from nlm_jax import folders
from nlm_jax import layout
from nlm_jax import outputs
from nlm_jax.config import Config, UserError, check_writable
from nlm_jax.folders import BPE_FILE, EXPORT_CONFIG, WEIGHTS, lncrnapy_config

LNCRNAPY_CONFIG = folders.CONFIG_FILE
# train.with_params_from reads the folder of --init_from and --pretrained_model here.
read_params = folders.read_params


def _is_export(path: str) -> bool:
  """An export folder (replaceable with --overwrite): only what export writes, or nothing."""
  names = set(os.listdir(path))
  return not names or ({WEIGHTS, EXPORT_CONFIG} <= names
                       and names <= {WEIGHTS, LNCRNAPY_CONFIG, EXPORT_CONFIG, BPE_FILE})


def check_out_dir(model_dir: str, out_dir: str, overwrite: bool) -> None:
  """Refuses an OUT_DIR that is, holds or lies inside MODEL_DIR or any run or export folder,
  or that holds anything export did not write: --overwrite replaces only an export."""
  out, model = os.path.realpath(out_dir), os.path.realpath(model_dir)
  if out == model or out.startswith(model + os.sep) or model.startswith(out + os.sep):
    raise UserError(f"OUT_DIR {out_dir!r} is, holds or lies inside MODEL_DIR {model_dir!r}: "
                    "choose an OUT_DIR outside it.")
  if os.path.lexists(out_dir):
    if not os.path.isdir(out_dir) or os.path.islink(out_dir):
      raise UserError(f"OUT_DIR {out_dir!r} exists and is no folder: choose another OUT_DIR.")
    if not overwrite:
      raise UserError(f"{out_dir!r} exists: choose another OUT_DIR or add --overwrite.")
    if not _is_export(out_dir):
      raise UserError(f"OUT_DIR {out_dir!r} holds files export did not write (--overwrite "
                      "replaces only an export folder): choose another OUT_DIR.")
  holder = outputs.holder_of(os.path.dirname(out))
  if holder is not None:
    raise UserError(f"OUT_DIR {out_dir!r} lies inside {holder!r}, which holds a model or an "
                    "export: choose an OUT_DIR outside it.")
  check_writable(os.path.dirname(out), "output", "OUT_DIR")


def export(model_dir: str, out_dir: str, overwrite: bool = False) -> str:
  """Writes the best checkpoint of `model_dir` to `out_dir` (see the module docstring),
  under a temporary name renamed when complete; an existing `out_dir` is refused unless
  `overwrite` and it is an export folder (check_out_dir)."""
  from safetensors import SafetensorError  # its writer's I/O errors (a full disk)

  if folders.kind(model_dir) != "checkpoint":
    raise UserError(f"MODEL_DIR {model_dir!r} is an export or lncRNA-Py folder already: its "
                    f"{WEIGHTS} is in lncRNA-Py's layout; export reads the folders of "
                    "nlm_jax.pretrain and nlm_jax.finetune.")
  check = lambda: check_out_dir(model_dir, out_dir, overwrite)
  check()
  cli.start_jax()
  cfg, params = folders.read(model_dir)
  tensors = layout.to_tensors(cfg, params)
  with outputs.writing(out_dir, check, "OUT_DIR", True, (OSError, SafetensorError)) as tmp:
    _write(cfg, tensors, tmp)
  if cfg.attend_partial_window:
    print(f"note: {model_dir!r} attends to a sequence's last window also when it holds fewer "
          f"than {cfg.kernel_size} nucleotides (attend_partial_window); lncRNA-Py attends to "
          "whole windows only, so there its outputs for other lengths differ a little from "
          "nlm_jax's, which keeps the model's rule.")
  return out_dir


def _write(cfg: Config, tensors: dict[str, np.ndarray], folder: str) -> None:
  from safetensors.numpy import save_file

  save_file(tensors, os.path.join(folder, WEIGHTS),
            metadata={"format": "pt", "exported_by": "nlm_jax", "exp_name": cfg.exp_name})
  with open(os.path.join(folder, LNCRNAPY_CONFIG), "w") as f:
    json.dump(lncrnapy_config(cfg), f, indent=2, sort_keys=True)
  with open(os.path.join(folder, EXPORT_CONFIG), "w") as f:
    f.write(cfg.to_json())
  if cfg.encoding_method == "bpe":  # the folder reader found it (its tokenizer.bpe)
    shutil.copyfile(cfg.bpe_path, os.path.join(folder, BPE_FILE))


def main(argv: list[str]) -> None:
  if len(argv) != 3:
    raise UserError(f"expected MODEL_DIR and OUT_DIR, got {len(argv) - 1} argument(s). Usage: "
                    "python -m nlm_jax.export MODEL_DIR OUT_DIR [--overwrite]")
  out = export(argv[1], argv[2], flags.FLAGS.overwrite)
  print(f"exported the best checkpoint of {argv[1]} to {out}")


if __name__ == "__main__":
  flags.DEFINE_bool("overwrite", False, "Replace OUT_DIR if it is an earlier export.")
  cli.run(main, "nlm_jax.export", groups={"output": ("overwrite",)})
