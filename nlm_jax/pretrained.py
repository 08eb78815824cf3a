"""A pre-trained or fine-tuned model for use: embeddings, masked-nucleotide prediction,
classification (fine-tuned models), and the Flax module and parameters.

  import nlm_jax
  model = nlm_jax.load("models/DEMO_conv_nm64_...")     # a checkpoint, export or lncRNA-Py folder
  x = model.embed(["ACGTAGC...", ...], pooling="mean")  # (sequences, d_model) float32
  model.predict_masked("ACG?TTAGC??A")                   # "ACGATTAGCAGA"
  nlm_jax.load("models/CLS_...").classify(["ACGT..."])  # P(pcRNA) of each (nlm_jax.finetune)

Sequences of any length. A sequence longer than the model's context is cut into
consecutive windows of that context (conv: (context_length - 1) * kernel_size
nucleotides; tokens: context_length - 1 tokens of the whole sequence's tokenization, CLS
in front of each window, SEP after the last one when there is room). Each window is
encoded on its own; pooling then runs over the real positions of all windows: "mean" and
"max" as if the sequence were one row, "cls" the mean of the windows' CLS outputs
weighted by their real positions. `long_sequences="truncate"` keeps the first window
only (what pre-training's evaluation sees); "lncrnapy" does as lncRNA-Py's classify and
embeddings scripts: conv keeps the last window (its 4D-DNA encoding takes a long sequence's
3' end), tokens the first (its tokenizers cut the 3' end).

Real positions: for conv, the windows of kernel_size nucleotides that attention sees
(model.key_windows: whole windows, as lncRNA-Py; a partial last window too for models
trained with attend_partial_window; CLS excluded); for tokens, the sequence's tokens (CLS,
SEP and PAD excluded). A sequence without any (shorter than a kernel, or a k-mer model
given fewer than k nucleotides) pools its CLS output.

Rows are grouped into buckets of 16, 32, 64, ... positions (the context at most), so
short sequences cost little; each bucket compiles once. Batches are sharded over the
devices given to `load` (all local devices by default).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from typing import Any, Callable, Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from nlm_jax import cli
from nlm_jax import encodings
from nlm_jax import fasta as fasta_lib
from nlm_jax import folders
from nlm_jax import hub
from nlm_jax import model as model_lib
from nlm_jax import train
from nlm_jax.config import Config, UserError

MASK_CHAR = "?"  # a masked nucleotide in the input of predict_masked
POOLINGS = ("mean", "max", "cls")
LONG_SEQUENCES = ("windows", "truncate", "lncrnapy")
MIN_BUCKET = 16  # positions of the smallest bucket


def load(path: str, precision: str = "auto", devices: list[jax.Device] | None = None,
         batch_size: int = 64, bpe_file: str = "", context_length: int | None = None) -> "Model":
  """The model in `path`, built from the folder alone: a pre-training or fine-tuning folder
  (model_dir/exp_name; its best checkpoint), a folder written by `python -m nlm_jax.export`,
  or one written by lncRNA-Py's save_pretrained (MaskedConvModel, MaskedTokenModel, e.g. its
  published lncRNA-BERT models), or such a model's Hugging Face hub id
  ("luukromeijn/lncRNA-BERT-CSE-k9-pretrained": downloaded once, then read from the hub's
  cache; hub.py).

  precision: "auto" (bf16 on GPU/TPU, fp32 on CPU), "fp32" or "bf16".
  batch_size: rows per device step (rounded up to a multiple of the device count).
  context_length: positions of a window, CLS included (default: the folder's; 768 for
    lncRNA-Py's, which do not store it, at most its positional table's 5000).
  bpe_file: the .bpe file of a lncRNA-Py BPE model (nlm_jax's folders hold their own).

  A bad argument, a damaged folder (folders.py checks it whole) or a JAX environment that
  cannot start raise UserError, whose text is the line the commands print.
  """
  if not isinstance(path, (str, os.PathLike)):
    raise UserError(f"path must be a model folder (a str or os.PathLike), got {path!r}.")
  if not isinstance(bpe_file, (str, os.PathLike)):
    raise UserError(f"bpe_file must be a path (a str), got {bpe_file!r}.")
  if context_length is not None and (not _is_int(context_length) or context_length < 2):
    raise UserError(f"context_length must be a whole number of at least 2 (CLS plus one "
                    f"position) or None, got {context_length!r}.")
  _check_options(precision, devices, batch_size)
  name = os.fspath(path)
  path = hub.resolve(name)
  cli.start_jax()
  cfg, params = folders.read(path, os.fspath(bpe_file), context_length)
  return Model(cfg, params, precision, devices, batch_size, name=name)


def _iterate(sequences: Iterable[str]) -> Iterator[str]:
  """The sequences, one by one; anything that is no iterable of them is a UserError."""
  try:
    return iter(sequences)
  except TypeError:
    raise UserError(f"sequences must be a string or an iterable of strings, got "
                    f"{type(sequences).__name__}.") from None


def _is_int(value: Any) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_options(precision: str, devices: list[jax.Device] | None, batch_size: int) -> None:
  """The arguments of load and Model that are not the folder's."""
  if precision not in ("auto", "fp32", "bf16"):
    raise UserError(f"precision must be auto, fp32 or bf16, got {precision!r}.")
  if not _is_int(batch_size) or batch_size < 1:
    raise UserError(f"batch_size must be a whole number of at least 1, got {batch_size!r}.")
  if devices is not None and (not isinstance(devices, (list, tuple)) or not devices
                              or not all(isinstance(d, jax.Device) for d in devices)):
    raise UserError(f"devices must be a non-empty list of JAX devices (jax.devices()), got "
                    f"{devices!r}.")


class Model:
  """A pre-trained nucleotide BERT. `module` (a Flax Linen module) and `params` are what
  fine-tuning code builds on: `module.apply({"params": params}, inputs, method="embed")`
  gives the encoder output (B, L, D) and the attended length of each row; `encode` makes
  `inputs` from sequences; `name`: the folder it came from (messages name it)."""

  def __init__(self, cfg: Config, params: Any, precision: str = "auto",
               devices: list[jax.Device] | None = None, batch_size: int = 64, name: str = ""):
    _check_options(precision, devices, batch_size)
    devices = list(devices or jax.local_devices())
    platform = devices[0].platform
    if precision == "auto":
      precision = "fp32" if platform == "cpu" else "bf16"
    attention = cfg.attention if cfg.attention != "cudnn" or platform == "gpu" else "auto"
    self.cfg = dataclasses.replace(cfg, precision=precision, attention=attention)
    self.module = model_lib.build(self.cfg)
    self.mesh = train.make_mesh(devices)
    n = self.mesh.devices.size
    self.batch_size = n * -(-batch_size // n)
    model_lib.check_fits(self.cfg, self.batch_size // n, devices[0], False, "--batch_size")
    self.params = jax.device_put(params, NamedSharding(self.mesh, P()))
    self.tokenizer = encodings.tokenizer(self.cfg) if self.cfg.is_token else None
    self._fns: dict[str, Callable] = {}
    self.name = name or cfg.exp_name

  @property
  def d_model(self) -> int:
    return self.cfg.d_model

  # ---- inputs ----

  def _windows(self, seq: str | np.ndarray, long_sequences: str) -> list[np.ndarray]:
    """One sequence (letters, or codes / token ids made earlier) as unpadded model-input
    rows: one per window, or one window (LONG_SEQUENCES)."""
    cfg = self.cfg
    truncate = long_sequences != "windows"
    if not cfg.is_token:
      codes = fasta_lib.encode(seq) if isinstance(seq, str) else seq
      w = cfg.n_nucleotides
      if long_sequences == "lncrnapy":
        return [codes[-w:] if len(codes) > w else codes]
      rows = [codes[i:i + w] for i in range(0, len(codes), w)] or [codes]
      return rows[:1] if truncate else rows
    ids = self.tokenizer.spans(fasta_lib.encode(seq))[0] if isinstance(seq, str) else seq
    n = cfg.context_length - 1
    chunks = [ids[i:i + n] for i in range(0, len(ids), n)] or [ids]
    rows = []
    for i, chunk in enumerate(chunks[:1] if truncate else chunks):
      end = [encodings.SEP] if i == len(chunks) - 1 and len(chunk) < n else []
      rows.append(np.concatenate([[encodings.CLS], chunk, end]).astype(np.int32))
    return rows

  def _width(self, row: np.ndarray) -> int:
    """Input width of the bucket that holds `row`."""
    cfg = self.cfg
    ks = 1 if cfg.is_token else cfg.kernel_size
    positions = len(row) if cfg.is_token else 1 + -(-len(row) // ks)
    bucket = min(cfg.context_length, max(MIN_BUCKET, 1 << (positions - 1).bit_length()))
    return bucket if cfg.is_token else (bucket - 1) * ks

  def _pad(self, rows: list[np.ndarray], width: int) -> np.ndarray:
    if self.cfg.is_token:
      out = np.full((len(rows), width), encodings.PAD, np.int32)
      out[:, 0] = encodings.CLS  # rows that only fill a batch keep a key to attend to
    else:
      out = np.full((len(rows), width), fasta_lib.PAD, np.uint8)
    for i, row in enumerate(rows):
      out[i, :len(row)] = row
    return out

  def encode(self, sequences: str | Iterable[str]) -> np.ndarray:
    """Model inputs for the first window of each sequence, padded to the full context:
    nucleotide codes (B, (context_length - 1) * kernel_size) for conv, token ids
    (B, context_length) otherwise; as pre-training's evaluation makes them."""
    seqs = [sequences] if isinstance(sequences, str) else list(sequences)
    width = self.cfg.context_length if self.cfg.is_token else self.cfg.n_nucleotides
    return self._pad([self._windows(s, "truncate")[0] for s in seqs], width)

  # ---- device steps ----

  def _jit(self, name: str, fn: Callable) -> Callable:
    if name not in self._fns:
      rows = NamedSharding(self.mesh, P("data"))
      self._fns[name] = jax.jit(fn, in_shardings=(NamedSharding(self.mesh, P()), rows),
                                out_shardings=rows)
    return self._fns[name]

  def _batches(self, fn: Callable, rows: list[np.ndarray]
               ) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Runs fn(params, inputs) over `rows` grouped by bucket; yields (row indices, the
    outputs of those rows as NumPy arrays)."""
    widths = np.array([self._width(r) for r in rows])
    for width in np.unique(widths):
      members = np.flatnonzero(widths == width)
      for first in range(0, len(members), self.batch_size):
        idx = members[first:first + self.batch_size]
        batch = [rows[i] for i in idx]
        batch += [batch[0][:0]] * (self.batch_size - len(batch))  # fill: empty rows
        inputs = jax.device_put(self._pad(batch, int(width)), NamedSharding(self.mesh, P("data")))
        out = jax.device_get(fn(self.params, inputs))
        yield idx, {k: v[:len(idx)] for k, v in out.items()}

  def _pool_fn(self, params: Any, inputs: jax.Array) -> dict[str, jax.Array]:
    y_BxLxD, lengths_B = self.module.apply({"params": params}, inputs, method="embed")
    y_BxLxD = y_BxLxD.astype(jnp.float32)
    pos_1xL = jnp.arange(y_BxLxD.shape[1])[None]
    real_BxL = model_lib.real_positions(inputs, lengths_B, y_BxLxD.shape[1], self.cfg.is_token)
    empty_B = ~jnp.any(real_BxL, axis=1)
    real_BxL = jnp.where(empty_B[:, None], pos_1xL == 0, real_BxL)  # then CLS stands in
    masked = jnp.where(real_BxL[..., None], y_BxLxD, 0.0)
    return {"cls": y_BxLxD[:, 0], "sum": masked.sum(1),
            "max": jnp.where(real_BxL[..., None], y_BxLxD, -jnp.inf).max(1),
            "count": real_BxL.sum(1).astype(jnp.float32)}

  # ---- embeddings ----

  def embed(self, sequences: str | Iterable[str], pooling: str = "mean",
            long_sequences: str = "windows") -> np.ndarray:
    """Pooled encoder outputs, float32 (sequences, d_model): "mean" or "max" over the real
    positions, or "cls" (see the module docstring for windows)."""
    seqs = [sequences] if isinstance(sequences, str) else sequences
    chunks = list(self.embed_stream(seqs, pooling, long_sequences))
    return np.concatenate(chunks) if chunks else np.zeros((0, self.d_model), np.float32)

  def embed_stream(self, sequences: Iterable[str], pooling: str = "mean",
                   long_sequences: str = "windows", chunk: int | None = None
                   ) -> Iterator[np.ndarray]:
    """`embed` for any number of sequences: yields the embeddings of consecutive chunks
    of sequences, in order, holding only one chunk in memory."""
    if pooling not in POOLINGS:
      raise UserError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}.")
    for seqs, first in self._chunks(sequences, long_sequences, chunk):
      yield self._embed_chunk(seqs, pooling, long_sequences, first)

  def _embed_chunk(self, seqs: list[str], pooling: str, long_sequences: str, first: int
                   ) -> np.ndarray:
    rows, owner = [], []
    for i, s in enumerate(seqs):
      fasta_lib.check_letters(s, f"sequence {first + i + 1}")
      windows = self._windows(s, long_sequences)
      rows += windows
      owner += [i] * len(windows)
    owner = np.array(owner)
    d = self.d_model
    out = {"cls": np.zeros((len(rows), d), np.float32), "sum": np.zeros((len(rows), d), np.float32),
           "max": np.zeros((len(rows), d), np.float32), "count": np.zeros(len(rows), np.float32)}
    for idx, res in self._batches(self._jit("pool", self._pool_fn), rows):
      for k in out:
        out[k][idx] = res[k]
    n = len(seqs)
    count = np.zeros(n, np.float64)
    np.add.at(count, owner, out["count"])
    if pooling == "max":
      pooled = np.full((n, d), -np.inf, np.float32)
      np.maximum.at(pooled, owner, out["max"])
      return pooled
    total = np.zeros((n, d), np.float64)
    weighted = out["sum"] if pooling == "mean" else out["cls"] * out["count"][:, None]
    np.add.at(total, owner, weighted)
    return (total / count[:, None]).astype(np.float32)

  # ---- classification ----

  def classify(self, sequences: str | Iterable[str], long_sequences: str = "windows"
               ) -> np.ndarray:
    """P(pcRNA) of each sequence, float32 (sequences,), from a fine-tuned classifier
    (nlm_jax.finetune). A sequence longer than the context is classified over all its
    windows: their logits are averaged, weighted by their real positions, before the
    sigmoid; long_sequences="truncate" keeps the first window, "lncrnapy" the window
    lncRNA-Py classifies (conv: the 3' end; see the module docstring)."""
    seqs = [sequences] if isinstance(sequences, str) else sequences
    chunks = list(self.classify_stream(seqs, long_sequences))
    return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)

  def classify_stream(self, sequences: Iterable[str], long_sequences: str = "windows",
                      chunk: int | None = None) -> Iterator[np.ndarray]:
    """`classify` for any number of sequences: yields the probabilities of consecutive
    chunks of sequences, in order."""
    if not self.cfg.is_classifier:
      raise UserError(f"{self.name} is a pre-trained (masked language) model, not a "
                      "classifier: fine-tune it first with python -m nlm_jax.finetune.")
    for seqs, first in self._chunks(sequences, long_sequences, chunk):
      yield self._classify_chunk(seqs, long_sequences, first)

  def _chunks(self, sequences: Iterable[str], long_sequences: str, chunk: int | None
              ) -> Iterator[tuple[list[str], int]]:
    """Consecutive chunks of `sequences` (default 16 batches) with the index of each
    chunk's first sequence, once `long_sequences` is checked."""
    if long_sequences not in LONG_SEQUENCES:
      raise UserError(f"long_sequences must be one of {', '.join(LONG_SEQUENCES)}, got "
                      f"{long_sequences!r}.")
    if chunk is not None and (not _is_int(chunk) or chunk < 1):
      raise UserError(f"chunk must be a whole number of at least 1 or None, got {chunk!r}.")
    it, first = _iterate(sequences), 0
    while seqs := list(itertools.islice(it, chunk or 16 * self.batch_size)):
      yield seqs, first
      first += len(seqs)

  def _classify_fn(self, params: Any, inputs: jax.Array) -> dict[str, jax.Array]:
    y_BxLxD, lengths_B = self.module.apply({"params": params}, inputs, method="embed")
    logits_B = self.module.apply({"params": params}, y_BxLxD, inputs, lengths_B, method="head")
    real_BxL = model_lib.real_positions(inputs, lengths_B, y_BxLxD.shape[1], self.cfg.is_token)
    return {"logit": logits_B, "count": real_BxL.sum(1).astype(jnp.float32)}

  def _classify_chunk(self, seqs: list[str], long_sequences: str, first: int) -> np.ndarray:
    rows, owner = [], []
    for i, s in enumerate(seqs):
      fasta_lib.check_letters(s, f"sequence {first + i + 1}")
      windows = self._windows(s, long_sequences)
      rows += windows
      owner += [i] * len(windows)
    logit = np.zeros(len(rows), np.float64)
    weight = np.zeros(len(rows), np.float64)
    for idx, res in self._batches(self._jit("classify", self._classify_fn), rows):
      logit[idx], weight[idx] = res["logit"], np.maximum(res["count"], 1.0)
    total, norm = np.zeros(len(seqs)), np.zeros(len(seqs))
    np.add.at(total, owner, logit * weight)
    np.add.at(norm, owner, weight)
    return (1 / (1 + np.exp(-total / norm))).astype(np.float32)

  # ---- masked prediction ----

  def _check_mlm(self) -> None:
    if self.cfg.is_classifier:
      raise UserError(f"{self.name} is a fine-tuned classifier: it has no masked-language "
                      "head. Use classify, or the pre-trained model it came from.")

  def logits(self, inputs: np.ndarray) -> np.ndarray:
    """MLM logits, float32, for model inputs as the sampler or `encode` makes them:
    nucleotide codes (B, N) -> (B, N', 4) over A, C, G, T (N' = N rounded down to whole
    kernels); token ids (B, L) -> (B, L, V). For a classifier: its logit (B,)."""
    fn = self._jit("logits", lambda params, x: {"logits": self.module.apply(
        {"params": params}, x).astype(jnp.float32)})
    out = None
    inputs = np.asarray(inputs)
    if inputs.ndim != 2 or not np.issubdtype(inputs.dtype, np.integer):
      raise UserError(f"inputs must be a 2-D array of whole numbers (rows of nucleotide codes or "
                      f"token ids, as encode makes them), got {inputs.dtype} of shape "
                      f"{inputs.shape}.")
    for first in range(0, len(inputs), self.batch_size):
      batch = inputs[first:first + self.batch_size]
      n = len(batch)
      if n < self.batch_size:
        fill = self._pad([batch[0][:0]] * (self.batch_size - n), inputs.shape[1])
        batch = np.concatenate([batch, fill.astype(inputs.dtype)])
      res = jax.device_get(fn(self.params, jax.device_put(
          batch, NamedSharding(self.mesh, P("data")))))["logits"][:n]
      if out is None:
        out = np.empty((len(inputs), *res.shape[1:]), np.float32)
      out[first:first + n] = res
    if out is None:
      return np.zeros((0,) if self.cfg.is_classifier else (0, 0, 4), np.float32)
    return out

  def _nucleotide_probs_fn(self, params: Any, inputs: jax.Array) -> dict[str, jax.Array]:
    """Per input position, the probability of A, C, G, T at each nucleotide of the
    position's token: (B, L, M, 4), M = 1 for conv, the longest token otherwise."""
    probs = jax.nn.softmax(self.module.apply({"params": params}, inputs).astype(jnp.float32))
    if not self.cfg.is_token:
      return {"probs": probs[:, :, None, :]}
    nucs_VxM = self.tokenizer.token_nucleotides()
    onehot_VxMx4 = (nucs_VxM[..., None] == np.arange(4)).astype(np.float32)
    return {"probs": jnp.einsum("blv,vmc->blmc", probs, onehot_VxMx4)}

  def predict_masked(self, sequences: str | Iterable[str], probabilities: bool = False
                     ) -> str | list[str] | np.ndarray | list[np.ndarray]:
    """Predicts the nucleotides written as "?" in each sequence.

    Returns each sequence with its "?" replaced by the most likely nucleotide or, with
    `probabilities`, a (number of "?", 4) array of the probabilities of A, C, G, T. For
    conv models a "?" is a masked nucleotide, as in pre-training. For token models every
    token overlapping a "?" becomes MASK (tokenized with A in place of each "?"), and the
    probability of a nucleotide sums the probabilities of the tokens holding it at that
    offset; a "?" that falls in no token (the trailing partial k-mer) gets NaN and "N".
    Other letters as in pre-training (U reads as T, anything else as N).
    """
    self._check_mlm()
    single = isinstance(sequences, str)
    seqs = [sequences] if single else list(_iterate(sequences))
    # where: per sequence, its "?" positions and for each the (row, position, offset) to read
    rows, where = [], []
    for i, seq in enumerate(seqs):
      fasta_lib.check_letters(seq, f"sequence {i + 1}", allowed=MASK_CHAR)
      masked = np.flatnonzero(np.frombuffer(seq.encode("latin-1"), np.uint8) == ord(MASK_CHAR))
      first_row = len(rows)
      if self.cfg.is_token:
        ids, starts, ends = self.tokenizer.spans(fasta_lib.encode(seq.replace(MASK_CHAR, "A")))
        tok = np.searchsorted(starts, masked, side="right") - 1
        inside = (tok >= 0) & (masked < ends[np.maximum(tok, 0)])
        ids = ids.copy()
        ids[tok[inside]] = encodings.MASK
        windows = self._windows(ids, "windows")
        per_row = self.cfg.context_length - 1
        row = np.where(inside, first_row + tok // per_row, -1)
        pos = 1 + tok % per_row
        offset = masked - starts[np.maximum(tok, 0)]
      else:
        windows = self._windows(fasta_lib.encode(seq.replace(MASK_CHAR, "N")), "windows")
        w = self.cfg.n_nucleotides
        row, pos, offset = first_row + masked // w, masked % w, np.zeros_like(masked)
      rows += windows
      where.append((masked, row, pos, offset))
    probs_of_row: dict[int, np.ndarray] = {}
    for idx, res in self._batches(self._jit("probs", self._nucleotide_probs_fn), rows):
      for j, i in enumerate(idx):
        probs_of_row[int(i)] = res["probs"][j]
    out = []
    for seq, (masked, row, pos, offset) in zip(seqs, where, strict=True):
      p = np.full((len(masked), 4), np.nan, np.float32)
      for m in np.flatnonzero(row >= 0):
        v = probs_of_row[int(row[m])][pos[m], offset[m]]
        if v.sum() > 0:
          p[m] = v / v.sum()
      if probabilities:
        out.append(p)
      else:
        letters = np.frombuffer(seq.encode("latin-1"), np.uint8).copy()
        best = np.where(np.isnan(p).any(1), 4, np.argmax(np.nan_to_num(p), axis=1))
        letters[masked] = np.frombuffer(b"ACGTN", np.uint8)[best]
        out.append(letters.tobytes().decode("latin-1"))
    return out[0] if single else out
