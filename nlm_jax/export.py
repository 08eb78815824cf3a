r"""Exports a pre-trained model to safetensors, in lncRNA-Py's layout, so the weights
load outside JAX; reads that layout back (`read`), from nlm_jax's exports and from
lncRNA-Py's own save_pretrained folders alike, through the one mapping `key_map`.

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
import tempfile
from typing import Any, Callable

import numpy as np
from absl import flags

from nlm_jax import checkpoint as checkpoint_lib
from nlm_jax import folders
from nlm_jax.config import Config, UserError, check_writable
from nlm_jax.folders import BPE_FILE, EXPORT_CONFIG, PE_LENGTH, WEIGHTS, lncrnapy_config

LNCRNAPY_CONFIG = folders.CONFIG_FILE
REEXPORT = "export the model again with python -m nlm_jax.export"
REDOWNLOAD = "download the folder again (hf download NAME --local-dir DIR)"


def _linear_to(k):  # Flax Dense kernel (in, out) -> torch Linear weight (out, in)
  return k.T


def _conv_to(k):  # (ks * 4, n_kernels), rows j * 4 + c -> Conv1d (n_kernels, 4, ks)
  return k.reshape(-1, 4, k.shape[1]).transpose(2, 1, 0)


def _conv_from(w):
  return w.transpose(2, 1, 0).reshape(-1, w.shape[0])


def _deconv_to(k):  # (C, ks * 4), columns j * 4 + o -> ConvTranspose1d (C, 4, ks)
  return k.reshape(k.shape[0], -1, 4).transpose(0, 2, 1)


def _deconv_from(w):
  return w.transpose(0, 2, 1).reshape(w.shape[0], -1)


def _same(x):
  return x


# layout name -> (to torch, from torch)
LAYOUTS = {"same": (_same, _same), "linear": (_linear_to, _linear_to),
           "conv": (_conv_to, _conv_from), "deconv": (_deconv_to, _deconv_from)}


def key_map(cfg: Config) -> list[tuple[tuple[str, ...], str, str]]:
  """(Flax parameter path, lncRNA-Py tensor name, layout) of every parameter, with the
  encoder's blocks one by one (model.unstack_blocks's layout)."""
  entries = []

  def dense(path: tuple[str, ...], name: str) -> None:
    entries.extend([(path + ("kernel",), name + ".weight", "linear"),
                    (path + ("bias",), name + ".bias", "same")])

  def norm(path: tuple[str, ...], name: str) -> None:
    entries.extend([(path + ("scale",), name + ".weight", "same"),
                    (path + ("bias",), name + ".bias", "same")])

  if cfg.is_token:
    entries.append((("embedding", "embedding"), "base_arch.embedder.weight", "same"))
  else:
    stem = "base_arch.conv_seq_embedder."
    entries += [(("stem", "cls"), stem + "cls_token", "same"),
                (("stem", "conv", "kernel"), stem + "conv_seq_encoder.cse_layers.0.weight", "conv"),
                (("stem", "conv", "bias"), stem + "conv_seq_encoder.cse_layers.0.bias", "same")]
    if cfg.use_input_linear:
      dense(("stem", "input_linear"), stem + "linear")
  for i in range(cfg.N):
    block, name = ("encoder", f"block_{i}"), f"base_arch.encoder.layers.{i}."
    for j, proj in enumerate("qkvo"):
      dense(block + (proj,), name + f"0.linears.{j}")
    norm(block + ("LayerNorm_0",), name + "1.norm")
    dense(block + ("ff_in",), name + "2.lin_1")
    dense(block + ("ff_out",), name + "2.lin_2")
    norm(block + ("LayerNorm_1",), name + "3.norm")
  norm(("encoder", "final_norm"), "base_arch.encoder.norm")
  if cfg.is_classifier:  # lncRNA-Py's Classifier
    for i in range(len(cfg.hidden_cls_layers)):
      dense((f"hidden_{i}",), f"hidden_layers.{i}")
    dense(("output",), "output")
  elif cfg.is_token:
    dense(("mlm",), "mlm_layer")
  else:
    if not cfg.no_output_linear:
      dense(("head", "output_linear"), "linear")
    deconv = f"transposed_conv_layers.{1 if cfg.output_relu else 0}"
    entries += [(("head", "deconv", "kernel"), deconv + ".weight", "deconv"),
                (("head", "deconv_bias"), deconv + ".bias", "same")]
  return entries


def _pe_name(cfg: Config) -> str:
  return "base_arch.pos_encoder.pe" if cfg.is_token else "base_arch.positional_encoder.pe"


def to_tensors(cfg: Config, params: Any) -> dict[str, np.ndarray]:
  """lncRNA-Py's tensors (float32, contiguous) from nlm_jax parameters."""
  from nlm_jax import model as model_lib

  params = model_lib.unstack_blocks(params)
  out = {}
  for path, name, layout in key_map(cfg):
    x = params
    for p in path:
      x = x[p]
    out[name] = np.ascontiguousarray(LAYOUTS[layout][0](np.asarray(x, np.float32)))
  out[_pe_name(cfg)] = model_lib.sinusoidal(PE_LENGTH, cfg.d_model)[None]
  return out


def from_tensors(cfg: Config, tensors: dict[str, np.ndarray], remedy: str = REEXPORT
                 ) -> dict[str, Any]:
  """nlm_jax parameters from lncRNA-Py's tensors; every name must be there with the
  shape the configuration gives (else a UserError ending in `remedy`)."""
  from nlm_jax import model as model_lib

  abstract = model_lib.unstack_blocks(model_lib.abstract_params(cfg))
  params: dict[str, Any] = {}
  for path, name, layout in key_map(cfg):
    if name not in tensors:
      raise UserError(f"the weights hold no tensor {name!r}: {remedy}.")
    x = LAYOUTS[layout][1](np.asarray(tensors[name], np.float32))
    want = abstract
    for p in path:
      want = want[p]
    if x.shape != want.shape:
      raise UserError(f"tensor {name!r} has shape {x.shape}, the configuration needs "
                      f"{want.shape}: {remedy}.")
    node = params
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = x
  return model_lib.stack_blocks(params)


def holder_of(path: str) -> str | None:
  """The nearest folder at or above `path` that holds a model (an nlm_jax run or export, or
  lncRNA-Py's model folder), or None: outputs written in there could be mistaken for part
  of it, or destroy it."""
  folder = os.path.abspath(path)
  while True:
    if _holds_model(folder):
      return folder
    parent = os.path.dirname(folder)
    if parent == folder:
      return None
    folder = parent


def check_output_file(out: str, overwrite: bool, suffix: str, command: str,
                      written_here: Callable[[str], bool]) -> None:
  """OUT of embed or classify: a new `suffix` file, or with --overwrite one that `command`
  wrote (`written_here`), outside any model or export folder."""
  if not out.endswith(suffix):
    raise UserError(f"OUT {out!r} must end in {suffix}.")
  if os.path.isdir(out):
    raise UserError(f"OUT {out!r} is a folder: pass a file name ending in {suffix}.")
  if os.path.lexists(out):
    if not overwrite:
      raise UserError(f"OUT {out!r} exists: choose another name or add --overwrite.")
    if os.path.islink(out) or not written_here(out):
      raise UserError(f"OUT {out!r} is no file that {command} wrote (--overwrite replaces only "
                      "those): choose another name.")
  folder = os.path.dirname(os.path.abspath(out))
  holder = holder_of(folder)
  if holder is not None:
    raise UserError(f"OUT {out!r} lies inside {holder!r}, which holds a model or an export: "
                    "write it elsewhere.")
  check_writable(folder, "output", "OUT")


def _holds_model(folder: str) -> bool:
  if os.path.isfile(os.path.join(folder, EXPORT_CONFIG)):
    return True
  try:  # any project may hold a config.json: only a model's counts
    with open(os.path.join(folder, checkpoint_lib.CONFIG_FILE), "rb") as f:
      head = f.read(1 << 16)
  except OSError:
    return False
  return b'"encoding_method"' in head or b'"base_arch_config"' in head


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
  holder = holder_of(os.path.dirname(out))
  if holder is not None:
    raise UserError(f"OUT_DIR {out_dir!r} lies inside {holder!r}, which holds a model or an "
                    "export: choose an OUT_DIR outside it.")
  check_writable(os.path.dirname(out), "output", "OUT_DIR")


def export(model_dir: str, out_dir: str, overwrite: bool = False) -> str:
  """Writes the best checkpoint of `model_dir` to `out_dir` (see the module docstring).
  The folder is written under a temporary name and renamed when complete; an existing
  `out_dir` is refused unless `overwrite` and it is an export folder (check_out_dir)."""
  from safetensors import SafetensorError  # its writer's I/O errors (a full disk)

  check_out_dir(model_dir, out_dir, overwrite)
  cfg, params = checkpoint_lib.restore(model_dir)
  tensors = to_tensors(cfg, params)
  parent = os.path.dirname(os.path.abspath(out_dir))
  tmp = None
  try:
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".export-", dir=parent)
    _write(cfg, tensors, model_dir, tmp)
    if os.path.exists(out_dir):  # --overwrite: the old folder goes only once the new one is whole
      old = tmp + ".old"
      os.rename(out_dir, old)
      try:
        os.rename(tmp, out_dir)
      except BaseException:
        os.rename(old, out_dir)
        raise
      shutil.rmtree(old)
    else:
      os.rename(tmp, out_dir)
  except BaseException as e:
    if tmp is not None:
      shutil.rmtree(tmp, ignore_errors=True)
    if isinstance(e, (OSError, SafetensorError)):
      why = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0][:200]
      raise UserError(f"writing the export folder {out_dir!r} failed ({why}): free disk space, "
                      "or choose another OUT_DIR.") from None
    raise
  return out_dir


def _write(cfg: Config, tensors: dict[str, np.ndarray], model_dir: str, folder: str) -> None:
  from safetensors.numpy import save_file

  save_file(tensors, os.path.join(folder, WEIGHTS),
            metadata={"format": "pt", "exported_by": "nlm_jax", "exp_name": cfg.exp_name})
  with open(os.path.join(folder, LNCRNAPY_CONFIG), "w") as f:
    json.dump(lncrnapy_config(cfg), f, indent=2, sort_keys=True)
  with open(os.path.join(folder, EXPORT_CONFIG), "w") as f:
    f.write(cfg.to_json())
  if cfg.encoding_method == "bpe":
    bpe = os.path.join(model_dir, BPE_FILE)
    shutil.copyfile(bpe if os.path.isfile(bpe) else cfg.bpe_path, os.path.join(folder, BPE_FILE))
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(folder, 0o777 & ~umask)  # mkdtemp made it private
  for name in os.listdir(folder):
    os.chmod(os.path.join(folder, name), 0o666 & ~umask)


def read(path: str, bpe_file: str = "", context_length: int | None = None
         ) -> tuple[Config, dict[str, Any]]:
  """(config, params) of any model folder nlm_jax reads (folders.kind): a pre-training
  folder's best checkpoint, an export, or lncRNA-Py's MaskedConvModel / MaskedTokenModel.
  bpe_file and context_length: see folders.read_config."""
  cfg = folders.read_config(path, bpe_file, context_length)
  return cfg, read_params(path, cfg)


def read_params(path: str, cfg: Config) -> dict[str, Any]:
  """The parameters in the folder `path`, for the architecture of `cfg`: tensors in
  lncRNA-Py's layout mapped back through `key_map`, or the best checkpoint."""
  from safetensors import SafetensorError
  from safetensors.numpy import load_file

  kind = folders.kind(path)
  if kind == "checkpoint":
    return checkpoint_lib.restore(path)[1]
  remedy = REEXPORT if kind == "export" else REDOWNLOAD
  weights = os.path.join(path, WEIGHTS)
  try:
    tensors = load_file(weights)
  except (OSError, SafetensorError) as e:
    raise UserError(f"{weights!r} cannot be read ({str(e).splitlines()[0][:120]}): "
                    f"{remedy}.") from None
  return from_tensors(cfg, tensors, remedy)


def main(argv: list[str]) -> None:
  if len(argv) != 3:
    raise UserError(f"expected MODEL_DIR and OUT_DIR, got {len(argv) - 1} argument(s). Usage: "
                    "python -m nlm_jax.export MODEL_DIR OUT_DIR [--overwrite]")
  out = export(argv[1], argv[2], flags.FLAGS.overwrite)
  print(f"exported the best checkpoint of {argv[1]} to {out}")


if __name__ == "__main__":
  from nlm_jax import cli

  flags.DEFINE_bool("overwrite", False, "Replace OUT_DIR if it is an earlier export.")
  cli.run(main, "nlm_jax.export")
