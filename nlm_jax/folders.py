"""The one reader of model folders, used by every command and nlm_jax.load: `read_config`
(without JAX), `read_params`, `read`.

  checkpoint  model_dir/exp_name of nlm_jax.pretrain or nlm_jax.finetune: its config.json
              (nlm_jax's Config) and orbax checkpoints
  export      python -m nlm_jax.export: nlm_jax.json, model.safetensors, config.json
  lncrnapy    lncRNA-Py's save_pretrained (MaskedConvModel, MaskedTokenModel, Classifier):
              config.json with `base_arch_config`, model.safetensors

Nothing in a folder is trusted: its configuration is checked against a schema (the type,
range or words of every entry, the entries each kind of model needs), its weights against
the shapes that configuration builds, and every weight must be finite. Any failure is one
UserError naming the file, the entry or tensor, what was expected, and the fix.

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
import typing
from typing import Any

from nlm_jax import config as config_lib
from nlm_jax import layout
from nlm_jax.config import Config, Range, UserError

CONFIG_FILE = "config.json"  # nlm_jax.pretrain's Config, or lncRNA-Py's constructor arguments
EXPORT_CONFIG = "nlm_jax.json"
WEIGHTS = "model.safetensors"
BPE_FILE = "tokenizer.bpe"  # the BPE model inside nlm_jax's folders
PE_LENGTH = layout.PE_LENGTH
LNCRNAPY_CONTEXT = 768  # lncRNA-Py's default --context_length
EXPECTED = ("expected a folder of nlm_jax.pretrain (config.json and checkpoints), of "
            "nlm_jax.export (nlm_jax.json, model.safetensors) or of lncRNA-Py's save_pretrained "
            "(config.json with base_arch_config, model.safetensors)")
# The fix for a folder of each kind that does not read as it was written.
REMEDIES = {"checkpoint": "restore the folder from a copy, or train the model again",
            "export": "export the model again with python -m nlm_jax.export",
            "lncrnapy": "download the folder again (hf download NAME --local-dir DIR)"}


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
  stored = _load_json(config_path, EXPECTED)
  if "base_arch_config" in stored:
    return "lncrnapy"
  if "encoding_method" in stored:
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


# ---------------------------------------------------------------- the schema of config.json


@dataclasses.dataclass(frozen=True)
class Entry:
  """What one entry of a config.json may hold: a JSON value of `type` ("int", "number",
  "bool", "str", or "ints": a list of whole numbers), in `allowed` (a Range, or words);
  null where `null`."""
  type: str
  allowed: Range | tuple[str, ...] | None = None
  null: bool = False

  def admits(self, value: Any) -> bool:
    if value is None:
      return self.null
    if self.type == "ints":
      return isinstance(value, list) and all(Entry("int", self.allowed).admits(v) for v in value)
    kinds = {"int": (int,), "number": (int, float), "bool": (bool,), "str": (str,)}[self.type]
    if type(value) not in kinds:  # type(): JSON's true is no number
      return False
    if isinstance(self.allowed, Range):
      return value in self.allowed
    return self.allowed is None or value in self.allowed

  def __str__(self) -> str:
    if isinstance(self.allowed, tuple):
      text = f"one of {', '.join(self.allowed)}"
    else:
      text = {"int": "a whole number", "number": "a number", "bool": "true or false",
              "str": "a string", "ints": "a list of whole numbers"}[self.type]
      text += f" {self.allowed}" if self.allowed else ""
    return text + (", or null" if self.null else "")


def _schema_of_config() -> dict[str, Entry]:
  """The entries of nlm_jax's config.json: every field of Config, of its type, in its
  range (config.RANGES) or words (config.CHOICES)."""
  types = {int: "int", float: "number", bool: "bool", str: "str", tuple: "ints"}
  schema = {}
  for name, hint in typing.get_type_hints(Config).items():
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = typing.get_origin(hint) if typing.get_origin(hint) is tuple else (args or [hint])[0]
    allowed = config_lib.RANGES.get(name) or config_lib.CHOICES.get(name)
    schema[name] = Entry(types[base], Range(1) if base is tuple else allowed,
                         null=type(None) in typing.get_args(hint))
  return schema


CONFIG_SCHEMA = _schema_of_config()
# The entries a model cannot be built without, by encoding (and task): the rest default.
NEEDED = {"all": ("encoding_method", "d_model", "N", "d_ff", "h", "context_length"),
          "conv": ("n_kernels", "kernel_size", "input_linear", "no_input_relu",
                   "no_output_linear", "output_relu"),
          "kmer": ("k",), "bpe": ("bpe_vocab_size",), "nuc": (),
          "cls": ("hidden_cls_layers", "freeze_network")}
# lncRNA-Py's constructor arguments (original-behaviour.md 11.3): the wrapper's, and its
# base_arch_config's.
LNCRNAPY_SCHEMA = {
    "dropout": Entry("number", Range(0, 1, high_open=True)),
    "pred_batch_size": Entry("int", Range(1)), "n_hidden_kernels": Entry("int", Range(0)),
    "output_linear": Entry("bool"), "output_relu": Entry("bool"), "pooling": Entry("str"),
    "hidden_layers": Entry("ints", Range(1), null=True)}
LNCRNAPY_BASE_SCHEMA = {
    "type": Entry("str"), "N": Entry("int", Range(1)), "d_model": Entry("int", Range(1)),
    "d_ff": Entry("int", Range(1), null=True), "h": Entry("int", Range(1), null=True),
    "dropout": Entry("number", Range(0, 1, high_open=True)),
    "n_kernels": Entry("int", Range(1)), "kernel_size": Entry("int", Range(1)),
    "input_linear": Entry("bool", null=True), "input_relu": Entry("bool"),
    "n_hidden_kernels": Entry("int", Range(0)), "vocab_size": Entry("int", Range(6))}
LNCRNAPY_NEEDED = {"all": ("type", "N", "d_model"), "CSEBERT": ("n_kernels", "kernel_size"),
                   "BERT": ("vocab_size",)}


def check_entries(stored: dict[str, Any], schema: dict[str, Entry], needed: tuple[str, ...],
                  where: str, remedy: str, within: str = "") -> None:
  """Raises UserError for the first entry of `needed` that `stored` lacks, or the first
  entry it holds that its `schema` Entry does not admit (`within`: where in the file)."""
  for name in needed:
    if name not in stored:
      raise UserError(f"{where!r} lacks the entry {name!r}{within} ({schema[name]}): {remedy}.")
  for name, entry in schema.items():
    if name in stored and not entry.admits(stored[name]):
      value = json.dumps(stored[name])
      raise UserError(f"{where!r} holds {name!r}{within}: {value[:60]}{'...' if len(value) > 60 else ''}, "
                      f"expected {entry}: {remedy}.")


def _load_json(file: str, remedy: str) -> dict[str, Any]:
  try:
    with open(file, "rb") as f:
      stored = json.loads(f.read().decode("utf-8"))
  except (OSError, ValueError) as e:
    raise UserError(f"{file!r} cannot be read as JSON ({str(e)[:120]}): {remedy}.") from None
  if not isinstance(stored, dict):
    raise UserError(f"{file!r} holds no JSON object: {remedy}.")
  return stored


def config_from_json(stored: dict[str, Any], where: str, remedy: str) -> Config:
  """The Config that nlm_jax's config.json (or an export's nlm_jax.json) `stored` holds,
  once every entry a model needs is there and each entry is of its schema."""
  check_entries(stored, CONFIG_SCHEMA, ("encoding_method",), where, remedy)
  stored = config_lib.with_rules_of_its_time(stored)
  encoding, task = stored["encoding_method"], stored.get("task", "mlm")
  check_entries(stored, CONFIG_SCHEMA,
                NEEDED["all"] + NEEDED[encoding] + (NEEDED["cls"] if task == "cls" else ()),
                where, remedy)
  values = {k: v for k, v in stored.items() if k in CONFIG_SCHEMA}
  cfg = Config(**{"fasta_train": "", "fasta_valid": "", **values})
  _check_architecture(cfg, where, remedy)
  return cfg


def _check_architecture(cfg: Config, where: str, remedy: str) -> None:
  """What the entries say together must build a model."""
  if cfg.d_model % cfg.n_heads:
    raise UserError(f"{where!r} holds d_model {cfg.d_model}, which its {cfg.n_heads} attention "
                    f"heads do not divide: {remedy}.")
  if cfg.encoding_method == "conv" and cfg.input_linear is False and cfg.d_model != cfg.n_kernels:
    raise UserError(f"{where!r} holds input_linear false with n_kernels {cfg.n_kernels} and d_model "
                    f"{cfg.d_model}, which only a linear layer joins: {remedy}.")


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
  remedy = REMEDIES["lncrnapy"]
  base = stored.get("base_arch_config")
  if not isinstance(base, dict):
    raise UserError(f"{config_path!r} holds no object base_arch_config: {remedy}.")
  arch = base.get("type")
  if arch not in ("CSEBERT", "BERT"):
    raise UserError(f"{config_path!r} holds a base architecture of type {arch!r}: nlm_jax reads "
                    "lncRNA-Py's BERT and CSEBERT models.")
  check_entries(stored, LNCRNAPY_SCHEMA, (), config_path, remedy)
  check_entries(base, LNCRNAPY_BASE_SCHEMA, LNCRNAPY_NEEDED["all"] + LNCRNAPY_NEEDED[arch],
                config_path, remedy, " in base_arch_config")
  if base.get("n_hidden_kernels") or stored.get("n_hidden_kernels"):
    raise UserError(f"{config_path!r} describes a model with hidden kernel layers "
                    "(n_hidden_kernels > 0), which nlm_jax does not build.")
  if context_length is None:
    context_length = min(LNCRNAPY_CONTEXT, pe_length)
  if context_length > pe_length:
    raise UserError(f"context length {context_length} exceeds the {pe_length} positions of the "
                    f"positional table of the model in {config_path!r}: choose at most {pe_length}.")
  d = base["d_model"]
  fields: dict[str, Any] = dict(
      d_model=d, N=base["N"], dropout=stored.get("dropout", 0.0),
      encoder_dropout=base.get("dropout", 0.1), batch_size=stored.get("pred_batch_size", 8),
      # Defaults stay None, so the experiment name is lncRNA-Py's.
      d_ff=None if base.get("d_ff") in (None, 4 * d) else base["d_ff"],
      h=None if base.get("h") in (None, max(1, d // 64)) else base["h"])
  if arch == "CSEBERT":
    if bpe_file:
      raise UserError(f"{config_path!r} holds a conv (CSE) model, which reads no BPE file: drop it.")
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
  prefix = os.path.basename(os.path.normpath(os.path.dirname(os.path.abspath(config_path))))
  cfg = Config("", "", exp_prefix=prefix or "lncRNA-Py", context_length=context_length, **fields)
  _check_architecture(cfg, config_path, remedy)
  return cfg


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
          shape = f.get_slice(name).get_shape()
          if len(shape) != 3 or shape[1] < 1:
            raise UserError(f"{weights!r} holds {name!r} of shape {tuple(shape)}, not (1, "
                            f"positions, d_model): {REMEDIES['lncrnapy']}.")
          return shape[1]
  except (OSError, SafetensorError) as e:
    raise UserError(f"{weights!r} cannot be read ({str(e).splitlines()[0][:120]}): "
                    f"{REMEDIES['lncrnapy']}.") from None
  return PE_LENGTH


def read_config(path: str, bpe_file: str = "", context_length: int | None = None) -> Config:
  """The Config of any folder `kind` accepts, checked (module docstring). context_length:
  the positions of a window (default: the folder's; lncRNA-Py's: 768). bpe_file:
  lncRNA-Py's BPE models only (nlm_jax's folders hold their own)."""
  k = kind(path)
  remedy = REMEDIES[k]
  if k == "lncrnapy":
    config_path = os.path.join(path, CONFIG_FILE)
    return config_from_lncrnapy(_load_json(config_path, remedy), config_path,
                                _pe_length(os.path.join(path, WEIGHTS)), bpe_file, context_length)
  file = os.path.join(path, EXPORT_CONFIG if k == "export" else CONFIG_FILE)
  cfg = config_from_json(_load_json(file, remedy), file, remedy)
  if bpe_file:
    raise UserError(f"{path!r} is a nlm_jax model folder, which holds its own tokenizer: drop the "
                    "BPE file (it is for lncRNA-Py's BPE models).")
  if cfg.encoding_method == "bpe":
    cfg = dataclasses.replace(cfg, data_dir="", bpe_file=_tokenizer_of(path, cfg, remedy))
  if context_length is not None:
    cfg = dataclasses.replace(cfg, context_length=context_length)
  return cfg


def _tokenizer_of(path: str, cfg: Config, remedy: str) -> str:
  """The BPE model of a nlm_jax folder: its tokenizer.bpe (or, in folders from before it
  was kept, the file its run read), of the model's vocabulary."""
  from nlm_jax import encodings  # sentencepiece: only for BPE

  bpe = os.path.join(path, BPE_FILE)
  if not os.path.isfile(bpe):
    if not os.path.isfile(cfg.bpe_path):
      raise UserError(f"{path!r} holds a BPE model without its tokenizer ({BPE_FILE}): copy the "
                      ".bpe file the model was trained with into the folder under that name.")
    bpe = cfg.bpe_path
  try:
    size = encodings.BpeTokenizer(bpe, 2).vocab_size
  except UserError:
    size = None
  if size != cfg.bpe_vocab_size:
    raise UserError(f"{bpe!r} is no BPE model of the {cfg.bpe_vocab_size} tokens that the model in "
                    f"{path!r} reads: {remedy}.")
  return os.path.abspath(bpe)


def read_params(path: str, cfg: Config) -> dict[str, Any]:
  """The parameters in the folder `path`, for the architecture of `cfg` (its read_config):
  its best checkpoint, or model.safetensors mapped back from lncRNA-Py's layout; every
  tensor of the shape `cfg` builds, every weight finite."""
  k = kind(path)
  remedy = REMEDIES[k]
  if k == "checkpoint":
    from nlm_jax import checkpoint  # orbax: JAX

    params = checkpoint.restore(path, cfg, remedy)
  else:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    weights = os.path.join(path, WEIGHTS)
    try:
      tensors = load_file(weights)
    except (OSError, SafetensorError) as e:
      raise UserError(f"{weights!r} cannot be read ({str(e).splitlines()[0][:120]}): "
                      f"{remedy}.") from None
    params = layout.from_tensors(cfg, tensors, weights, remedy)
  _check_finite(params, path)
  return params


def _check_finite(params: dict[str, Any], path: str, at: str = "") -> None:
  """Non-finite weights (a run that diverged, a damaged file) would give NaN embeddings and
  probabilities without a word: refused."""
  import numpy as np

  for name, value in params.items():
    if isinstance(value, dict):
      _check_finite(value, path, f"{at}{name}/")
      continue
    bad = int(np.size(value) - np.isfinite(np.asarray(value)).sum())
    if bad:
      raise UserError(f"model folder {path!r} holds {bad:,} NaN or infinite weights in "
                      f"{at}{name}: it cannot give finite outputs; use another model (or an "
                      "earlier copy of this one).")


def read(path: str, bpe_file: str = "", context_length: int | None = None
         ) -> tuple[Config, dict[str, Any]]:
  """(config, params) of the model folder `path`: read_config, then read_params."""
  cfg = read_config(path, bpe_file, context_length)
  return cfg, read_params(path, cfg)


ARCHITECTURE = ("encoding_method", "d_model", "N", "d_ff", "h", "n_kernels", "kernel_size", "k",
                "bpe_file", "input_linear", "no_input_relu", "no_output_linear", "output_relu",
                "encoder_dropout", "attend_partial_window")


def _shapes_it(cfg: Config) -> list[str]:
  """The flags that shape a model of cfg's encoding."""
  common = ["encoding_method", "d_model", "N", "d_ff", "h"]
  if cfg.encoding_method == "conv":
    return common + ["n_kernels", "kernel_size", "input_linear", "no_input_relu",
                     "no_output_linear", "output_relu", "attend_partial_window"]
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
