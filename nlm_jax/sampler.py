"""Host-side batches in NumPy: epoch sampling, windows, reading frames and masking.

Every draw comes from a generator seeded by (seed, epoch, step, row of the global batch)
in a domain of its own (the epoch's order, a row, an evaluation set), so a batch is a
pure function of where it falls in the run, whatever the number of hosts. Batches are
dicts of small integer arrays; one-hot encoding happens on the device.

Array suffixes: B batch rows, N nucleotides (window positions), L token positions,
V vocabulary.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np

from nlm_jax import encodings
from nlm_jax import fasta as fasta_lib
from nlm_jax.config import Config

IGNORE = -1  # target of a position that is not an MLM target

Batch = dict[str, np.ndarray]


def rng_for(domain: str, *key: int) -> np.random.Generator:
  """The generator of one use of randomness (`domain`: "order", "row", "eval", "subset", "dropout")
  at `key`. The domain and the key's length lead the seed: SeedSequence pads a key with
  zeros, so without them (seed, epoch) and (seed, epoch, 0, 0) would be one stream."""
  tag = int.from_bytes(domain.encode(), "little")
  return np.random.default_rng(np.random.SeedSequence([tag, len(key), *(int(k) for k in key)]))


class RowRandom:
  """Draws with one generator per row: row r of every (rows, ...) draw comes from gens[r],
  so a row's windows and masks do not depend on which other rows share its batch."""

  def __init__(self, gens: list[np.random.Generator]):
    self.gens = gens

  def random(self, shape: tuple[int, ...]) -> np.ndarray:
    return np.stack([g.random(shape[1:]) for g in self.gens]) if self.gens else np.empty(shape)

  def integers(self, low, high, size: tuple[int, ...] | None = None, dtype=np.int64) -> np.ndarray:
    if size is None:  # one draw per row, bounds per row
      high = np.broadcast_to(high, (len(self.gens),))
      return np.array([g.integers(low, h) for g, h in zip(self.gens, high)], dtype=np.int64)
    if not self.gens:
      return np.empty(size, dtype=dtype)
    return np.stack([g.integers(low, high, size=size[1:], dtype=dtype) for g in self.gens])


def epoch_order(n_train: int, n_samples: int, rng: np.random.Generator) -> np.ndarray:
  """Indices of one epoch, as lncRNA-Py's RandomSampler draws them (original 4.3).

  Whole permutations of the training set, then the head of one more: `rest` distinct
  indices in random order, drawn in O(rest) (a whole permutation of RNAcentral's 30 M
  records took 3 s and 240 MB for an epoch of 10,000).
  """
  reps, rest = divmod(n_samples, n_train)
  parts = [rng.permutation(n_train) for _ in range(reps)]
  parts.append(rng.choice(n_train, rest, replace=False))
  return np.concatenate(parts)


def windows(lengths: np.ndarray, n_out: int, rng: np.random.Generator | RowRandom | None,
            unit: int, random_frame: bool) -> tuple[np.ndarray, np.ndarray]:
  """(start, stop) in each sequence of the window that fills at most n_out positions.

  The one cropping rule of every encoding (BPE training windows apply it to pieces:
  read_pieces); `unit` is the reading-frame step: the kernel size for conv, k for
  k-mers, 1 for nuc and BPE. With rng=None (evaluation)
  the window is the 5' start of the sequence. In training (an rng) a longer sequence
  gets a window at a random place, so the whole transcript is seen over time; a
  shorter one is shifted by 0..unit-1 nucleotides when random_frame is on, never by
  the whole sequence. Without random_frame windows start only at multiples of unit,
  keeping the reading frame of the 5' end.
  """
  lengths = np.asarray(lengths, dtype=np.int64)
  if rng is None:
    start = np.zeros_like(lengths)
  else:
    excess = lengths - n_out
    step = 1 if random_frame else unit
    long_start = step * rng.integers(0, np.maximum(excess, 0) // step + 1)
    max_shift = np.minimum(unit - 1, lengths - 1) if random_frame else np.zeros_like(lengths)
    short_start = rng.integers(0, max_shift + 1)
    start = np.where(excess > 0, long_start, short_start)
  return start, np.minimum(start + n_out, lengths)


def read_windows(fa: Source, indices: np.ndarray, n_out: int,
                 rng: np.random.Generator | RowRandom | None, unit: int,
                 random_frame: bool) -> tuple[np.ndarray, np.ndarray]:
  """uint8 codes (B, n_out) of the sequences' windows, PAD after each sequence's end,
  and whether each window reaches the end of its sequence (B,)."""
  lengths = fa.lengths[indices]
  start, stop = windows(lengths, n_out, rng, unit, random_frame)
  codes_BxN = np.full((len(indices), n_out), fasta_lib.PAD, dtype=np.uint8)
  for row, (i, a, b) in enumerate(zip(indices, start, stop)):
    codes_BxN[row, :b - a] = fa.codes(int(i), int(a), int(b))
  return codes_BxN, stop == lengths


def read_pieces(fa: Source, indices: np.ndarray, tokenizer: encodings.BpeTokenizer,
                rng: np.random.Generator | RowRandom) -> np.ndarray:
  """BPE training rows (B, L): the cropping rule (`windows`) applied to the pieces of each
  whole sequence, so a run of context_length - 1 pieces may start at any piece and the
  3' end is read as often as the 5' end. (A window drawn in nucleotides must hold
  context_length - 1 of the longest pieces; as many typical pieces span some 60% of it,
  so the rest of the window, and the 3' end of a long transcript, was never read.)"""
  ids = tokenizer.ids([fa.codes(int(i)) for i in indices])
  n_B = np.array([len(x) for x in ids], dtype=np.int64)
  start, stop = windows(n_B, tokenizer.context_length - 1, rng, 1, False)
  return tokenizer.rows([x[a:b] for x, a, b in zip(ids, start, stop)], stop == n_B)


def expand_spans(starts: np.ndarray, mask_size: int, n: int) -> np.ndarray:
  """Each start i becomes i, i+1, ..., i+mask_size-1, clamped to n-1, span after span."""
  spans = np.minimum(starts[..., None] + np.arange(mask_size), n - 1)
  return spans.reshape(*starts.shape[:-1], -1)


def span_indices(rng: np.random.Generator, n_rows: int, n: int, p_mlm: float, p_mask: float,
                 p_random: float, mask_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Masked, random and kept position indices of each row (original 8.2, steps 1-5).

  A fixed number of span starts per row, n_sel = int(p_mlm / mask_size * n), drawn
  without replacement in random order; each start becomes a span of mask_size
  positions (clamped at the end); the first int(p_mask * n_sel) spans are masked, the
  next int(p_random * n_sel) random, the rest kept.
  """
  n_sel = int(p_mlm / mask_size * n)
  starts = np.argsort(rng.random((n_rows, n)), axis=1)[:, :n_sel]
  idx = expand_spans(starts, mask_size, n)
  n_mask = int(p_mask * n_sel) * mask_size
  n_rand = int(p_random * n_sel) * mask_size
  return idx[:, :n_mask], idx[:, n_mask:n_mask + n_rand], idx[:, n_mask + n_rand:]


def mask_conv(codes_BxN: np.ndarray, rng: np.random.Generator, cfg: Config) -> Batch:
  """Masked-convolution-modelling inputs and targets for a batch of windows.

  Only A, C, G and T are ever targets (never N or padding). Random positions get a
  uniformly random nucleotide; masked positions become N, i.e. (1/4, 1/4, 1/4, 1/4)
  in the one-hot input, overriding random where spans overlap.
  """
  n_rows, n = codes_BxN.shape
  masked, random, kept = span_indices(rng, n_rows, n, cfg.p_mlm, cfg.p_mask, cfg.p_random,
                                      cfg.mask_size)
  rows = np.arange(n_rows)[:, None]
  is_target_BxN = codes_BxN < fasta_lib.N
  selected_BxN = np.zeros((n_rows, n), dtype=bool)
  for idx in (masked, random, kept):
    selected_BxN[rows, idx] = True
  inputs_BxN = codes_BxN.copy()
  random_BxN = np.zeros((n_rows, n), dtype=bool)
  random_BxN[rows, random] = True
  random_BxN &= is_target_BxN
  inputs_BxN[random_BxN] = rng.integers(0, 4, size=(n_rows, n), dtype=np.uint8)[random_BxN]
  masked_BxN = np.zeros((n_rows, n), dtype=bool)
  masked_BxN[rows, masked] = True
  inputs_BxN[masked_BxN & is_target_BxN] = fasta_lib.N
  # int8 before np.where: NumPy 2.5 refuses -1 as a uint8 (NEP 50).
  targets_BxN = np.where(selected_BxN & is_target_BxN, codes_BxN.astype(np.int8), IGNORE)
  return {"inputs": inputs_BxN, "targets": targets_BxN}


def mask_tokens(ids_BxL: np.ndarray, rng: np.random.Generator, cfg: Config,
                is_nucleotides_V: np.ndarray) -> Batch:
  """Token MLM inputs and targets (original 8.1): each token that stands for
  nucleotides (never a special token or UNK) is selected with probability p_mlm; a
  selected token becomes MASK with probability p_mask, a random nucleotide token with
  probability p_random, else stays."""
  selected_BxL = (rng.random(ids_BxL.shape) < cfg.p_mlm) & is_nucleotides_V[ids_BxL]
  u_BxL = rng.random(ids_BxL.shape)
  masked_BxL = selected_BxL & (u_BxL < cfg.p_mask)
  random_BxL = selected_BxL & (u_BxL >= cfg.p_mask) & (u_BxL < cfg.p_mask + cfg.p_random)
  inputs_BxL = ids_BxL.copy()
  inputs_BxL[masked_BxL] = encodings.MASK
  candidates = np.flatnonzero(is_nucleotides_V).astype(ids_BxL.dtype)
  inputs_BxL[random_BxL] = candidates[rng.integers(0, len(candidates), size=ids_BxL.shape)][random_BxL]
  targets_BxL = np.where(selected_BxL, ids_BxL, IGNORE).astype(np.int32)
  return {"inputs": inputs_BxL, "targets": targets_BxL}


class ConvEncoding:
  """Windows of (context_length-1)*kernel_size nucleotides, masked in spans."""

  token_nucs = None  # a position is one nucleotide
  cls_in_inputs = False  # the model puts CLS in front of the windows' positions

  def __init__(self, cfg: Config):
    self.cfg = cfg
    self.window, self.unit = cfg.n_nucleotides, cfg.kernel_size
    self.inputs_per_position = cfg.kernel_size

  def costs(self, fa: Source, indices: np.ndarray) -> np.ndarray:
    """Positions each sequence's row fills at most (CLS included): what packing plans with."""
    return 1 + -(-np.minimum(fa.lengths[indices], self.window) // self.unit)

  def positions(self, codes_BxN: np.ndarray) -> np.ndarray:
    """Positions each row fills (CLS included): the model's attended length."""
    return 1 + -(-np.count_nonzero(codes_BxN != fasta_lib.PAD, axis=1) // self.unit)

  def n_sequences(self, batch: Batch) -> int:
    if "segments" in batch:
      return int(batch["segments"].max(axis=1).sum())
    return int(np.any(batch["inputs"] != fasta_lib.PAD, axis=1).sum())

  def read(self, fa: Source, indices: np.ndarray, rng: np.random.Generator | RowRandom | None,
           random_frame: bool) -> np.ndarray:
    """The windows' nucleotide codes (B, N); conv windows carry no end marker."""
    return read_windows(fa, indices, self.window, rng, self.unit, random_frame)[0]

  def batch(self, codes_BxN: np.ndarray, rng: np.random.Generator,
            labels_B: np.ndarray | None = None) -> Batch:
    del labels_B
    return mask_conv(codes_BxN, rng, self.cfg)

  def real_nucleotides(self, batch: Batch) -> int:
    """Nucleotides of real sequence in the batch: every position but padding."""
    return int(np.count_nonzero(batch["inputs"] != fasta_lib.PAD))

  def empty_rows(self, n_rows: int, packed: bool = False) -> Batch:
    """Rows of padding without targets: they fill a short last batch (packed: with the
    segment and position arrays of packed rows, all 0)."""
    return _with_segments({"inputs": np.full((n_rows, self.window), fasta_lib.PAD, dtype=np.uint8),
                           "targets": np.full((n_rows, self.window), IGNORE, dtype=np.int8)},
                          packed, self.cfg.context_length)


class TokenEncoding:
  """Windows tokenized when sampled (BPE keeps a bounded cache: BpeTokenizer.ids), then
  masked."""

  cls_in_inputs = True  # a row starts with the CLS token
  inputs_per_position = 1

  def __init__(self, cfg: Config, tokenizer: encodings.KmerTokenizer | encodings.BpeTokenizer):
    self.cfg, self.tokenizer = cfg, tokenizer
    self.window, self.unit = tokenizer.window, tokenizer.unit
    self.token_nucs = tokenizer.token_nucleotides()  # (V, M) codes, -1 past each token's end
    self.is_nucleotides_V = self.token_nucs[:, 0] >= 0
    self.lengths_V = np.sum(self.token_nucs >= 0, axis=1)  # 0 for special tokens and UNK

  def read(self, fa: Source, indices: np.ndarray, rng: np.random.Generator | RowRandom | None,
           random_frame: bool) -> np.ndarray:
    """Token rows (B, L) of the windows; BPE training rows are runs of pieces instead
    (read_pieces)."""
    if rng is not None and isinstance(self.tokenizer, encodings.BpeTokenizer):
      return read_pieces(fa, indices, self.tokenizer, rng)
    return self.tokenizer(*read_windows(fa, indices, self.window, rng, self.unit, random_frame))

  def batch(self, ids_BxL: np.ndarray, rng: np.random.Generator,
            labels_B: np.ndarray | None = None) -> Batch:
    del labels_B
    return mask_tokens(ids_BxL, rng, self.cfg, self.is_nucleotides_V)

  def costs(self, fa: Source, indices: np.ndarray) -> np.ndarray:
    """Positions each sequence's row fills at most: CLS, its tokens, SEP (BPE tokenizes the
    sequences: BpeTokenizer.ids keeps them for the reads that follow)."""
    tokenizer = self.tokenizer
    if isinstance(tokenizer, encodings.BpeTokenizer):
      n = np.array([len(x) for x in tokenizer.ids([fa.codes(int(i)) for i in indices])])
    else:
      n = np.minimum(fa.lengths[indices], self.window) // tokenizer.k
    return np.minimum(n + 2, self.cfg.context_length)

  def positions(self, ids_BxL: np.ndarray) -> np.ndarray:
    return np.count_nonzero(ids_BxL != encodings.PAD, axis=1)

  def n_sequences(self, batch: Batch) -> int:
    if "segments" in batch:
      return int(batch["segments"].max(axis=1).sum())
    ids = batch["inputs"]
    return int(np.any((ids != encodings.PAD) & (ids != encodings.CLS) & (ids != encodings.SEP),
                      axis=1).sum())

  def real_nucleotides(self, batch: Batch) -> int:
    """Nucleotides of real sequence in the batch: those of its tokens as they were before
    masking (targets hold the selected ones), special tokens and UNK counting 0."""
    ids_BxL = np.where(batch["targets"] != IGNORE, batch["targets"], batch["inputs"])
    return int(self.lengths_V[ids_BxL].sum())

  def empty_rows(self, n_rows: int, packed: bool = False) -> Batch:
    """CLS then PAD, without targets (CLS keeps one key to attend to); packed rows hold
    only PAD (and segment 0)."""
    inputs = np.full((n_rows, self.cfg.context_length), encodings.PAD, dtype=np.int32)
    inputs[:, 0] = encodings.PAD if packed else encodings.CLS
    return _with_segments({"inputs": inputs, "targets": np.full_like(inputs, IGNORE)}, packed,
                          self.cfg.context_length)


class LabelEncoding:
  """Classification batches: the windows as model inputs, unmasked, and the class of
  each sequence (1 pcRNA, 0 ncRNA; -1 in rows that only fill a batch)."""

  token_nucs = None

  def __init__(self, base: ConvEncoding | TokenEncoding):
    self.base = base
    self.window, self.unit = base.window, base.unit

  def read(self, fa: Source, indices: np.ndarray, rng: np.random.Generator | RowRandom | None,
           random_frame: bool) -> np.ndarray:
    return self.base.read(fa, indices, rng, random_frame)

  def batch(self, inputs: np.ndarray, rng: np.random.Generator,
            labels_B: np.ndarray | None = None) -> Batch:
    del rng  # nothing to draw: the window was drawn by read
    return {"inputs": inputs, "labels": np.asarray(labels_B, dtype=np.int8)}

  def real_nucleotides(self, batch: Batch) -> int:
    inputs = batch["inputs"]
    return self.base.real_nucleotides({"inputs": inputs, "targets": np.full(inputs.shape, IGNORE)})

  def empty_rows(self, n_rows: int, packed: bool = False) -> Batch:
    del packed  # classification is never packed (Config.validate)
    return {"inputs": self.base.empty_rows(n_rows)["inputs"],
            "labels": np.full(n_rows, -1, dtype=np.int8)}

  def n_sequences(self, batch: Batch) -> int:
    return int(np.count_nonzero(batch["labels"] >= 0))


Encoding = ConvEncoding | TokenEncoding | LabelEncoding


def _with_segments(batch: Batch, packed: bool, context_length: int) -> Batch:
  """Packed rows' per-position arrays (B, context_length), all 0 (padding): `segments`, the
  row's sequence of each position (1, 2, ...), `positions`, its place in that sequence
  (0 at its CLS)."""
  if packed:
    zeros = np.zeros((len(batch["inputs"]), context_length), dtype=np.int32)
    batch.update(segments=zeros, positions=zeros.copy())
  return batch


def first_fit(costs: np.ndarray, rows: int, capacity: int) -> tuple[np.ndarray, np.ndarray]:
  """Packs items in order into steps of `rows` rows of `capacity`: each goes into the first
  row of the current step with room for it; one that fits in none opens the next step.
  Returns the steps' bounds in the items (steps + 1,) and each item's row."""
  bounds, row_of = [0], np.zeros(len(costs), dtype=np.int64)
  free = np.full(rows, capacity)
  for i, cost in enumerate(costs.tolist()):
    row = int(np.argmax(free >= cost))
    if free[row] < cost:
      bounds.append(i)
      free[:], row = capacity, 0
    free[row] -= cost
    row_of[i] = row
  bounds.append(len(costs))
  return np.array(bounds), row_of


def encoding_for(cfg: Config) -> Encoding:
  base = TokenEncoding(cfg, encodings.tokenizer(cfg)) if cfg.is_token else ConvEncoding(cfg)
  return LabelEncoding(base) if cfg.is_classifier else base


class TwoClass:
  """The pcRNA and the ncRNA file of a fine-tuning set as one source, as lncRNA-Py's
  Data([pcRNA, ncRNA]): records 0..n_pc-1 are the pcRNAs (label 1), the others the
  ncRNAs (label 0), so the epoch sampler draws from both together, in proportion."""

  def __init__(self, pc: fasta_lib.Fasta, nc: fasta_lib.Fasta):
    self.pc, self.nc = pc, nc
    self.lengths = np.concatenate([pc.lengths, nc.lengths])
    self.labels = np.concatenate([np.ones(len(pc), np.int8), np.zeros(len(nc), np.int8)])

  def __len__(self) -> int:
    return len(self.lengths)

  @property
  def pos_weight(self) -> float:
    """n_ncRNA / n_pcRNA: the weight of the pcRNA loss that balances the classes."""
    return len(self.nc) / len(self.pc)

  def codes(self, i: int, start: int = 0, stop: int | None = None) -> np.ndarray:
    n_pc = len(self.pc)
    return self.pc.codes(i, start, stop) if i < n_pc else self.nc.codes(i - n_pc, start, stop)


Source = fasta_lib.Fasta | TwoClass


def labels_of(source: Source, indices: np.ndarray) -> np.ndarray | None:
  return source.labels[indices] if isinstance(source, TwoClass) else None


def concat(batches: list[Batch]) -> Batch:
  return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


@dataclasses.dataclass
class TrainSampler:
  """Yields this host's share of every training batch of an epoch. With cfg.packing each
  row holds as many of the epoch's sequences as fit (first_fit, planned once per epoch
  from the sequences' costs): an epoch takes fewer steps, how many depends on the draw."""

  fa: Source
  cfg: Config
  encoding: Encoding
  process_index: int = 0
  process_count: int = 1
  _order: tuple[int, np.ndarray] | None = dataclasses.field(default=None, repr=False)
  _plan: tuple[int, np.ndarray, np.ndarray] | None = dataclasses.field(default=None, repr=False)

  @property
  def steps_per_epoch(self) -> int:
    """The steps of every epoch without packing."""
    return -(-self.cfg.n_samples_per_epoch // self.cfg.batch_size)

  def steps_in(self, epoch: int) -> int:
    return len(self._packing(epoch)[0]) - 1 if self.cfg.packing else self.steps_per_epoch

  def order(self, epoch: int) -> np.ndarray:
    """The sequences of `epoch`, in the order they are trained on (one draw per epoch)."""
    cached = self._order  # one read: the training loop asks while the prefetch thread samples
    if cached is None or cached[0] != epoch:
      cached = (epoch, epoch_order(len(self.fa), self.cfg.n_samples_per_epoch,
                                   rng_for("order", self.cfg.seed, epoch)))
      self._order = cached
    return cached[1]

  def _packing(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """(bounds of the steps in the epoch's order, the global row of each sequence)."""
    cached = self._plan
    if cached is None or cached[0] != epoch:
      costs = self.encoding.costs(self.fa, self.order(epoch))
      cached = (epoch, *first_fit(costs, self.cfg.batch_size, self.cfg.context_length))
      self._plan = cached
    return cached[1:]

  def indices(self, epoch: int, step: int) -> np.ndarray:
    """This host's sequence indices of batch `step` (0-based) of `epoch` (0-based)."""
    cfg = self.cfg
    local = cfg.batch_size // self.process_count
    if cfg.packing:
      bounds, rows = self._packing(epoch)
      mine = slice(bounds[step], bounds[step + 1])
      here = (rows[mine] // local) == self.process_index
      return self.order(epoch)[mine][here]
    first = step * cfg.batch_size + self.process_index * local
    return self.order(epoch)[first:first + local]

  def batch(self, epoch: int, step: int) -> Batch:
    """This host's rows of batch `step` of `epoch`: a short last batch is filled with
    rows without targets, so every batch has the same shape. Each row draws from its own
    generator, keyed by its row of the global batch: the global batch is the same however
    many hosts share it."""
    if self.cfg.packing:
      return self._packed_batch(epoch, step)
    cfg = self.cfg
    enc = self.encoding
    indices = self.indices(epoch, step)
    local = cfg.batch_size // self.process_count
    first = self.process_index * local  # this host's first row of the global batch
    rng = RowRandom([rng_for("row", cfg.seed, epoch, step, first + row)
                     for row in range(len(indices))])
    inputs = enc.read(self.fa, indices, rng, not cfg.no_random_reading_frame)
    batch = enc.batch(inputs, rng, labels_of(self.fa, indices))
    if len(indices) < local:
      batch = concat([batch, enc.empty_rows(local - len(indices))])
    return batch

  def _packed_batch(self, epoch: int, step: int) -> Batch:
    """Packed rows: each sequence's window and masks are drawn as for a row of its own
    (the cropping rule, int(p_mlm / mask_size * n) spans over its n nucleotides), from
    the generator of its (row, place in the row); then its positions follow the row's
    last: CLS, windows or tokens, each position tagged with the sequence (`segments`)
    and its place in it (`positions`)."""
    cfg, enc = self.cfg, self.encoding
    bounds, rows = self._packing(epoch)
    mine = slice(bounds[step], bounds[step + 1])
    order = self.order(epoch)[mine]
    local = cfg.batch_size // self.process_count
    first = self.process_index * local
    batch = enc.empty_rows(local, packed=True)
    per = enc.inputs_per_position
    skip = 0 if enc.cls_in_inputs else 1  # conv: the model adds each CLS before its windows
    for row in range(local):
      place = 0
      for j, i in enumerate(order[rows[mine] == first + row]):
        rng = RowRandom([rng_for("row", cfg.seed, epoch, step, first + row, j)])
        inputs = enc.read(self.fa, np.array([i]), rng, not cfg.no_random_reading_frame)
        n = int(enc.positions(inputs)[0])
        seq = enc.batch(inputs[:, :(n - skip) * per], rng)
        at = slice(place * per, (place + n - skip) * per)
        batch["inputs"][row, at], batch["targets"][row, at] = seq["inputs"][0], seq["targets"][0]
        batch["segments"][row, place:place + n] = j + 1
        batch["positions"][row, place:place + n] = np.arange(n)
        place += n
    return batch

  def epoch(self, epoch: int, first_step: int = 0) -> Iterator[Batch]:
    for step in range(first_step, self.steps_in(epoch)):
      yield self.batch(epoch, step)


def eval_set(fa: Source, indices: np.ndarray, encoding: Encoding, seed: int) -> Batch:
  """Fixed windows (the 5' start) and masks drawn once from `seed`: the figures
  computed on this set move only when the model does."""
  inputs = encoding.read(fa, indices, None, False)
  return encoding.batch(inputs, rng_for("eval", seed), labels_of(fa, indices))


def eval_sizes(n_train: int, n_valid: int, n_eval: int) -> tuple[int, int]:
  """(training, validation) evaluation subset sizes, lncRNA-Py's rule (original-behaviour.md
  4.1, 4.2): min(n_eval, n_valid) validation sequences and as many training ones (at most
  n_train), so that evaluating the training subset costs what the validation one costs."""
  n_valid_eval = min(n_eval, n_valid)
  return min(n_valid_eval, n_train), n_valid_eval


def eval_indices(n: int, n_eval: int, seed: int) -> np.ndarray:
  """The evaluation subset: RandomState(seed).permutation(n)[:n_eval], as lncRNA-Py picks
  its validation subset (all records, in that order, when there are fewer)."""
  return np.random.RandomState(seed).permutation(n)[:n_eval]


def train_eval_indices(n: int, n_eval: int, seed: int) -> np.ndarray:
  """The training evaluation subset: min(n_eval, n) distinct records in random order
  (lncRNA-Py draws them unseeded), in O(n_eval) whatever the size of the training set."""
  return rng_for("subset", seed).choice(n, min(n_eval, n), replace=False)
