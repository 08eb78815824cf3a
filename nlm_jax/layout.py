"""lncRNA-Py's names and PyTorch layouts of nlm_jax's parameters, both ways: what
nlm_jax.export writes and what folders.py reads back, from nlm_jax's exports and from
lncRNA-Py's own save_pretrained folders alike, through the one mapping `key_map`."""

from __future__ import annotations

from typing import Any

import numpy as np

from nlm_jax.config import Config, UserError

PE_LENGTH = 5000  # rows of lncRNA-Py's sinusoidal table


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


def pe_name(cfg: Config) -> str:
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
  out[pe_name(cfg)] = model_lib.sinusoidal(PE_LENGTH, cfg.d_model)[None]
  return out


def from_tensors(cfg: Config, tensors: dict[str, np.ndarray], where: str, remedy: str
                 ) -> dict[str, Any]:
  """nlm_jax parameters from lncRNA-Py's tensors (read from `where`): every name must be
  there with the shape the configuration gives, else a UserError ending in `remedy`."""
  from nlm_jax import model as model_lib

  abstract = model_lib.unstack_blocks(model_lib.abstract_params(cfg))
  params: dict[str, Any] = {}
  for path, name, layout in key_map(cfg):
    if name not in tensors:
      raise UserError(f"{where!r} holds no tensor {name!r}, which its configuration needs: "
                      f"{remedy}.")
    want = abstract
    for p in path:
      want = want[p]
    need = LAYOUTS[layout][0](np.empty(want.shape, np.float32)).shape
    if tensors[name].shape != need:
      raise UserError(f"{where!r} holds {name!r} of shape {tuple(tensors[name].shape)}, where its "
                      f"configuration needs {need}: {remedy}.")
    node = params
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = LAYOUTS[layout][1](np.asarray(tensors[name], np.float32))
  return model_lib.stack_blocks(params)
