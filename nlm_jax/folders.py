"""The model folders nlm_jax reads, told apart and configured without JAX.

  checkpoint  model_dir/exp_name of nlm_jax.pretrain or nlm_jax.finetune: its config.json
              (nlm_jax's Config) and orbax checkpoints
  export      python -m nlm_jax.export: nlm_jax.json, model.safetensors, config.json
  lncrnapy    lncRNA-Py's save_pretrained (MaskedConvModel, MaskedTokenModel, Classifier):
              config.json with `base_arch_config`, model.safetensors

lncRNA-Py's config.json holds its wrapper's constructor arguments (original-behaviour.md
11.3): `lncrnapy_config` writes them from a Config, `config_from_lncrnapy` reads them back.
They leave out two things. The context length: by default 768, what lncRNA-Py's scripts
use and its published models were trained with, at most the length of the stored
positional table. The tokenizer: vocab_size = 5 + 4^k tells nuc and k-mer models apart; a
BPE model needs the `.bpe` file it was trained with.
"""

from __future__ import annotations

import dataclasses
import filecmp
import json
import math
import os
from typing import Any

from nlm_jax.config import Config, UserError

CONFIG_FILE = "config.json"  # nlm_jax.pretrain's Config, or lncRNA-Py's constructor arguments
EXPORT_CONFIG = "nlm_jax.json"
WEIGHTS = "model.safetensors"
BPE_FILE = "tokenizer.bpe"  # the BPE model inside nlm_jax's folders
PE_LENGTH = 5000  # rows of lncRNA-Py's sinusoidal table
LNCRNAPY_CONTEXT = 768  # lncRNA-Py's default --context_length
EXPECTED = ("expected a folder of nlm_jax.pretrain (config.json and checkpoints), of "
            "nlm_jax.export (nlm_jax.json, model.safetensors) or of lncRNA-Py's save_pretrained "
            "(config.json with base_arch_config, model.safetensors)")


def kind(path: str) -> str:
  """The kind of the model folder `path`: "checkpoint", "export" or "lncrnapy"; a
  UserError for anything else."""
  if not os.path.isdir(path):
    raise UserError(f"model folder {path!r} does not exist: {EXPECTED}.")
  if os.path.isfile(os.path.join(path, EXPORT_CONFIG)):
    return "export"
  config_path = os.path.join(path, CONFIG_FILE)
  if not os.path.isfile(config_path):
    raise UserError(f"{path!r} holds no {CONFIG_FILE} or {EXPORT_CONFIG}: {EXPECTED}.")
  try:
    with open(config_path) as f:
      stored = json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f"{config_path!r} cannot be read as JSON ({str(e)[:120]}): "
                    f"{EXPECTED}.") from None
  if isinstance(stored, dict) and "base_arch_config" in stored:
    return "lncrnapy"
  if isinstance(stored, dict) and "encoding_method" in stored:
    return "checkpoint"
  raise UserError(f"{config_path!r} holds neither nlm_jax's settings nor lncRNA-Py's "
                  f"base_arch_config: {EXPECTED}.")


def lncrnapy_config(cfg: Config) -> dict[str, Any]:
  """The constructor arguments lncRNA-Py's from_pretrained reads (original 11.3)."""
  base = {"N": cfg.N, "d_ff": cfg.ff_dim, "d_model": cfg.d_model, "dropout": cfg.encoder_dropout,
          "h": cfg.n_heads}
  if cfg.is_token:
    base.update(type="BERT", vocab_size=cfg.vocab_size)
  else:
    base.update(input_linear=cfg.use_input_linear, input_relu=not cfg.no_input_relu,
                kernel_size=cfg.kernel_size, n_hidden_kernels=0, n_kernels=cfg.n_kernels,
                type="CSEBERT")
  if cfg.is_classifier:  # lncRNA-Py's Classifier
    return {"base_arch": None, "base_arch_config": base, "dropout": cfg.dropout,
            "hidden_layers": list(cfg.hidden_cls_layers),
            "pooling": "mean" if cfg.pooling == "mean" else "CLS", "pred_batch_size": cfg.batch_size}
  if cfg.is_token:
    return {"base_arch": None, "base_arch_config": base, "dropout": cfg.dropout,
            "pred_batch_size": cfg.batch_size}
  return {"base_arch": None, "base_arch_config": base, "dropout": cfg.dropout,
          "n_hidden_kernels": 0, "output_linear": not cfg.no_output_linear,
          "output_relu": cfg.output_relu, "pred_batch_size": cfg.batch_size}


def _token_encoding(vocab_size: int, bpe_file: str, config_path: str) -> dict[str, Any]:
  """The Config fields of a token model's tokenizer: BPE when a .bpe file is given (its
  vocabulary must be the model's), else nuc or k-mers from vocab_size = 5 + 4^k."""
  if bpe_file:
    from nlm_jax import encodings  # sentencepiece: only for BPE

    bpe_size = encodings.BpeTokenizer(bpe_file, 2).vocab_size
    if bpe_size != vocab_size:
      raise UserError(f"BPE file {bpe_file!r} has {bpe_size} tokens, the model in {config_path!r} "
                      f"{vocab_size}: pass the .bpe file the model was trained with.")
    return {"encoding_method": "bpe", "bpe_file": os.path.abspath(bpe_file),
            "bpe_vocab_size": vocab_size}
  k = round(math.log(max(vocab_size - 5, 1), 4))
  if k < 1 or 5 + 4 ** k != vocab_size:
    raise UserError(f"the model in {config_path!r} has {vocab_size} tokens, not 5 + 4^k: it is a "
                    "BPE model; pass the .bpe file it was trained with (--bpe_file, or bpe_file= "
                    "of nlm_jax.load).")
  return {"encoding_method": "nuc"} if k == 1 else {"encoding_method": "kmer", "k": k}


def config_from_lncrnapy(stored: dict[str, Any], config_path: str, pe_length: int = PE_LENGTH,
                         bpe_file: str = "", context_length: int | None = None) -> Config:
  """The Config of a lncRNA-Py MaskedConvModel, MaskedTokenModel or Classifier from its
  config.json (`stored`); `pe_length`: rows of its positional table, the longest context
  it allows."""
  base = stored.get("base_arch_config") or {}
  arch = base.get("type")
  if arch not in ("CSEBERT", "BERT"):
    raise UserError(f"{config_path!r} holds a base architecture of type {arch!r}: nlm_jax reads "
                    "lncRNA-Py's BERT and CSEBERT models.")
  if base.get("n_hidden_kernels") or stored.get("n_hidden_kernels"):
    raise UserError(f"{config_path!r} describes a model with hidden kernel layers "
                    "(n_hidden_kernels > 0), which nlm_jax does not build.")
  if context_length is None:
    context_length = min(LNCRNAPY_CONTEXT, pe_length)
  if context_length > pe_length:
    raise UserError(f"context length {context_length} exceeds the {pe_length} positions of the "
                    f"positional table of the model in {config_path!r}: choose at most {pe_length}.")
  try:
    d = base["d_model"]
    fields: dict[str, Any] = dict(
        d_model=d, N=base["N"], dropout=stored.get("dropout", 0.0),
        encoder_dropout=base.get("dropout", 0.1), batch_size=stored.get("pred_batch_size", 8),
        # Defaults stay None, so the experiment name is lncRNA-Py's.
        d_ff=None if base.get("d_ff") in (None, 4 * d) else base["d_ff"],
        h=None if base.get("h") in (None, max(1, d // 64)) else base["h"])
    if arch == "CSEBERT":
      nk = base["n_kernels"]
      fields.update(
          encoding_method="conv", n_kernels=nk, kernel_size=base["kernel_size"],
          input_linear=None if base.get("input_linear") in (None, d != nk) else base["input_linear"],
          no_input_relu=not base.get("input_relu", True),
          no_output_linear=not stored.get("output_linear", True),
          output_relu=bool(stored.get("output_relu", False)))
    else:
      fields.update(_token_encoding(base["vocab_size"], bpe_file, config_path))
    if "pooling" in stored or "hidden_layers" in stored:
      fields.update(_classifier(stored, config_path))
  except KeyError as e:
    raise UserError(f"{config_path!r} lacks the entry {e.args[0]!r}: download the folder "
                    "again.") from None
  if arch == "CSEBERT" and bpe_file:
    raise UserError(f"{config_path!r} holds a conv (CSE) model, which reads no BPE file: drop it.")
  prefix = os.path.basename(os.path.normpath(os.path.dirname(os.path.abspath(config_path))))
  return Config("", "", exp_prefix=prefix or "lncRNA-Py", context_length=context_length,
                **fields).validate()


def _classifier(stored: dict[str, Any], config_path: str) -> dict[str, Any]:
  """The Config fields of lncRNA-Py's Classifier head: CLS pooling, or the mean of its
  probing runs (--freeze_network, which lncRNA-Py's folder does not name the pre-trained
  model of: the folder itself stands in)."""
  pooling = stored.get("pooling", "CLS")
  if pooling not in ("CLS", "mean"):
    raise UserError(f"{config_path!r} is a Classifier with {pooling!r} pooling: nlm_jax's "
                    "classifiers pool CLS or mean.")
  fields = {"task": "cls", "hidden_cls_layers": tuple(stored.get("hidden_layers") or ())}
  if pooling == "mean":
    fields.update(freeze_network=True, pretrained_model=os.path.dirname(os.path.abspath(config_path)))
  return fields


def _pe_length(weights: str) -> int:
  """Rows of the positional table in lncRNA-Py's weights (PE_LENGTH if it is absent)."""
  from safetensors import SafetensorError, safe_open

  try:
    with safe_open(weights, framework="numpy") as f:
      for name in ("base_arch.positional_encoder.pe", "base_arch.pos_encoder.pe"):
        if name in f.keys():
          return f.get_slice(name).get_shape()[1]
  except (OSError, SafetensorError) as e:
    raise UserError(f"{weights!r} cannot be read ({str(e).splitlines()[0][:120]}): download the "
                    "folder again.") from None
  return PE_LENGTH


def _read_json_config(path: str, name: str) -> Config:
  file = os.path.join(path, name)
  try:
    with open(file) as f:
      return Config.from_json(f.read())
  except (OSError, ValueError, TypeError) as e:
    raise UserError(f"{file!r} cannot be read ({e}): write the folder again (nlm_jax.pretrain or "
                    "nlm_jax.export).") from None


def read_config(path: str, bpe_file: str = "", context_length: int | None = None) -> Config:
  """The Config of any folder `kind` accepts. context_length: the positions of a window
  (default: the folder's; lncRNA-Py's: 768). bpe_file: lncRNA-Py's BPE models only (nlm_jax's
  folders hold their own)."""
  k = kind(path)
  if k == "lncrnapy":
    config_path = os.path.join(path, CONFIG_FILE)
    with open(config_path) as f:
      stored = json.load(f)
    return config_from_lncrnapy(stored, config_path, _pe_length(os.path.join(path, WEIGHTS)),
                                bpe_file, context_length)
  cfg = _read_json_config(path, EXPORT_CONFIG if k == "export" else CONFIG_FILE)
  if bpe_file:
    raise UserError(f"{path!r} is a nlm_jax model folder, which holds its own tokenizer: drop the "
                    "BPE file (it is for lncRNA-Py's BPE models).")
  if cfg.encoding_method == "bpe" and os.path.isfile(os.path.join(path, BPE_FILE)):
    cfg = dataclasses.replace(cfg, data_dir="", bpe_file=os.path.abspath(os.path.join(path, BPE_FILE)))
  if context_length is not None:
    cfg = dataclasses.replace(cfg, context_length=context_length).validate()
  return cfg


ARCHITECTURE = ("encoding_method", "d_model", "N", "d_ff", "h", "n_kernels", "kernel_size", "k",
                "bpe_file", "input_linear", "no_input_relu", "no_output_linear", "output_relu",
                "encoder_dropout")


def _shapes_it(cfg: Config) -> list[str]:
  """The flags that shape a model of cfg's encoding."""
  common = ["encoding_method", "d_model", "N", "d_ff", "h"]
  if cfg.encoding_method == "conv":
    return common + ["n_kernels", "kernel_size", "input_linear", "no_input_relu",
                     "no_output_linear", "output_relu"]
  return common + {"kmer": ["k"], "bpe": ["bpe_file"]}.get(cfg.encoding_method, [])


def _built_with(cfg: Config, name: str) -> Any:
  """The value the model is built with: defaults resolved (d_ff 4*d_model, ...)."""
  resolved = {"d_ff": "ff_dim", "h": "n_heads", "input_linear": "use_input_linear"}
  return getattr(cfg, resolved.get(name, name))


def with_architecture_of(path: str, cfg: Config, given: set[str], flag: str = "--init_from"
                         ) -> Config:
  """`cfg` (from flags; `given`: the flags set on the command line or in a flagfile) with
  the architecture of the model folder `path`, for --init_from (or fine-tuning's
  --pretrained_model: `flag`). A given flag that differs from the folder is a UserError;
  the context length stays cfg's (for lncRNA-Py's folders at most its positional table)."""
  try:
    lncrnapy = kind(path) == "lncrnapy"
    wants_bpe = cfg.bpe_file and ("encoding_method" not in given or cfg.encoding_method == "bpe")
    src = read_config(path, cfg.bpe_path if lncrnapy and wants_bpe else "",
                      cfg.context_length if lncrnapy else None)
  except UserError as e:
    raise UserError(f"{flag}: {e}") from None
  if src.is_classifier:
    raise UserError(f"{flag} {path!r} is a fine-tuned classifier, not a pre-trained model: pass "
                    "the pre-trained one (or classify with this one: python -m nlm_jax.classify).")
  for name in _shapes_it(src):
    if name not in given:
      continue
    if name == "bpe_file":
      same = os.path.isfile(cfg.bpe_path) and filecmp.cmp(cfg.bpe_path, src.bpe_path, shallow=False)
    else:
      same = _built_with(cfg, name) == _built_with(src, name)
    if not same:
      raise UserError(f"--{name} {getattr(cfg, name)!r} differs from the model in {flag} "
                      f"{path!r} ({name} {_built_with(src, name)!r}): drop --{name}, the "
                      "architecture comes from that folder.")
  return dataclasses.replace(cfg, **{n: getattr(src, n) for n in ARCHITECTURE})
