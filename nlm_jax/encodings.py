"""Token encodings in NumPy: nucleotides (k = 1), non-overlapping k-mers and BPE
(sentencepiece), with lncRNA-Py's special ids (original-behaviour.md section 6).

Tokenizers turn windows of nucleotide codes (fasta.py: A0 C1 G2 T3 N4, PAD5) into
rows of `context_length` ids: CLS, the tokens, SEP when the sequence ended inside
the window, PAD. Array suffixes: B rows, N nucleotides, L token positions.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

from nlm_jax import fasta as fasta_lib
from nlm_jax.config import Config
from nlm_jax.errors import UserError

MASK, CLS, SEP, PAD, UNK = 0, 1, 2, 3, 4
N_SPECIAL = 5
CACHED_PIECES = 2 ** 23  # int32 ids of whole sequences that BpeTokenizer.ids keeps (32 MiB)
_ENTRY_PIECES = 64  # what an entry's key and array headers cost (~220 bytes), in pieces
_LETTERS = np.frombuffer(b"ACGTN", dtype=np.uint8)


def _finish_rows(tokens_BxT: np.ndarray, n_B: np.ndarray, ended_B: np.ndarray,
                 context_length: int) -> np.ndarray:
  """[CLS] + the first n tokens + [SEP if the sequence ended and there is room] + PAD."""
  b = len(n_B)
  ids_BxL = np.full((b, context_length), PAD, dtype=np.int32)
  ids_BxL[:, 0] = CLS
  pos = np.arange(context_length - 1)
  ids_BxL[:, 1:] = np.where(pos < n_B[:, None], tokens_BxT[:, :context_length - 1], PAD)
  rows = np.flatnonzero(ended_B & (n_B + 1 < context_length))
  ids_BxL[rows, n_B[rows] + 1] = SEP
  return ids_BxL


class KmerTokenizer:
  """Non-overlapping k-mers from the 5' start of the window; a k-mer holding anything
  but A, C, G, T is UNK; a trailing partial k-mer is dropped (nuc is k = 1)."""

  def __init__(self, k: int, context_length: int):
    self.k, self.context_length = k, context_length
    self.vocab_size = N_SPECIAL + 4 ** k
    self.window = (context_length - 1) * k  # nucleotides read per row
    self.unit = k  # reading-frame step of the windows

  def __call__(self, codes_BxN: np.ndarray, ended_B: np.ndarray) -> np.ndarray:
    b = len(codes_BxN)
    n_pos = self.context_length - 1
    codes = np.full((b, n_pos * self.k), fasta_lib.PAD, dtype=np.uint8)
    width = min(codes_BxN.shape[1], n_pos * self.k)
    codes[:, :width] = codes_BxN[:, :width]
    n_real_B = np.sum(codes != fasta_lib.PAD, axis=1) // self.k  # whole k-mers only
    ids_BxT = self._ids(codes.reshape(b, n_pos, self.k))
    return _finish_rows(ids_BxT, n_real_B, ended_B, self.context_length)

  def _ids(self, kmers_xk: np.ndarray) -> np.ndarray:
    """Token ids of k-mers (..., k) of codes: UNK where one holds anything but A/C/G/T."""
    kmers_xk = kmers_xk.astype(np.int64)
    ids = N_SPECIAL + np.sum(np.minimum(kmers_xk, 3) * 4 ** np.arange(self.k - 1, -1, -1), axis=-1)
    return np.where(np.any(kmers_xk >= fasta_lib.N, axis=-1), UNK, ids).astype(np.int32)

  def tokenize(self, seq: str) -> np.ndarray:
    """One sequence as given (no U -> T: anything but ACGT is UNK), for tests and tools."""
    codes = np.frombuffer(seq.upper().encode(), dtype=np.uint8)
    codes = np.select([codes == ord(c) for c in "ACGT"], range(4), fasta_lib.N).astype(np.uint8)
    row = np.full((1, max(len(codes), 1)), fasta_lib.PAD, np.uint8)
    row[0, :len(codes)] = codes
    return self(row, np.array([len(codes) // self.k < self.context_length]))[0]

  def spans(self, codes_N: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A whole sequence's token ids and the [start, end) of each token's nucleotides
    (a trailing partial k-mer is dropped)."""
    n_tokens = len(codes_N) // self.k
    starts = np.arange(n_tokens) * self.k
    return self._ids(codes_N[:n_tokens * self.k].reshape(n_tokens, self.k)), starts, starts + self.k

  def token_nucleotides(self) -> np.ndarray:
    """(V, k) nucleotide codes of every token; -1 for special tokens."""
    table = np.full((self.vocab_size, self.k), -1, dtype=np.int8)
    ids = np.arange(4 ** self.k)
    for j in range(self.k):
      table[N_SPECIAL:, j] = (ids // 4 ** (self.k - 1 - j)) % 4
    return table


class BpeTokenizer:
  """A sentencepiece BPE model (a lncRNA-Py `.bpe` file loads as it is): CLS, the
  first context_length - 1 pieces of the window, SEP if they all fit, PAD."""

  def __init__(self, path: str, context_length: int):
    import sentencepiece as spm

    if os.path.isdir(path):
      raise UserError(f"BPE file {path!r} is a folder: pass a sentencepiece model file.")
    if not os.path.isfile(path):
      raise UserError(f"BPE file {path!r} does not exist: check --bpe_file, or fit one with "
                      "python -m nlm_jax.bpe FASTA VOCAB_SIZE.")
    try:
      self.sp = spm.SentencePieceProcessor(model_file=path)
    except (RuntimeError, OSError) as e:
      raise UserError(f"BPE file {path!r} does not load as a sentencepiece model "
                      f"({str(e).splitlines()[0][:120]}): fit one with python -m nlm_jax.bpe.") from None
    pieces = [self.sp.id_to_piece(i) for i in range(self.sp.get_piece_size())]
    if (self.sp.bos_id(), self.sp.eos_id(), self.sp.pad_id(), self.sp.unk_id()) != (CLS, SEP, PAD, UNK) \
        or pieces[MASK] != "MASK":
      raise UserError(f"BPE file {path!r} does not use the special ids MASK 0, CLS 1, SEP 2, PAD 3, "
                      "UNK 4: fit it with python -m nlm_jax.bpe.")
    self.pieces = pieces
    self.vocab_size = len(pieces)
    self.is_nucleotides = np.array([i >= N_SPECIAL and bool(p) and set(p) <= set("ACGT")
                                    for i, p in enumerate(pieces)])
    if not self.is_nucleotides.any():
      raise UserError(f"BPE file {path!r} holds no nucleotide pieces (A, C, G, T): fit it on a "
                      "FASTA file with python -m nlm_jax.bpe.")
    self.max_piece = max(len(p) for p, ok in zip(pieces, self.is_nucleotides) if ok)
    self.context_length = context_length
    self.window = (context_length - 1) * self.max_piece  # enough for context_length - 1 pieces
    self.unit = 1
    self._cache: dict[bytes, np.ndarray] = {}
    self._n_cached = 0

  def __call__(self, codes_BxN: np.ndarray, ended_B: np.ndarray) -> np.ndarray:
    texts = [_LETTERS[row[row != fasta_lib.PAD]].tobytes().decode() for row in codes_BxN]
    return self.rows(self.sp.encode(texts), ended_B)

  def rows(self, runs: list, ended_B: np.ndarray) -> np.ndarray:
    """Rows (B, L) from runs of piece ids: CLS, the first context_length - 1 pieces of each
    run, SEP if the run ends its sequence and they all fit, PAD."""
    n_pos = self.context_length - 1
    n_B = np.array([min(len(run), n_pos) for run in runs], dtype=np.int64)
    tokens = np.full((len(runs), n_pos), PAD, dtype=np.int32)
    for row, run in enumerate(runs):
      tokens[row, :n_B[row]] = run[:n_B[row]]
    return _finish_rows(tokens, n_B, ended_B, self.context_length)

  def ids(self, codes: list[np.ndarray]) -> list[np.ndarray]:
    """Whole sequences' piece ids. Tokenizations are kept, keyed by content, up to
    CACHED_PIECES pieces in all: a sequence drawn again is not tokenized again."""
    keys = [hashlib.blake2b(c.tobytes(), digest_size=16).digest() for c in codes]
    out = [self._cache.get(key) for key in keys]
    todo = [row for row, ids in enumerate(out) if ids is None]
    encoded = self.sp.encode([_LETTERS[codes[row]].tobytes().decode() for row in todo])
    for row, ids in zip(todo, encoded):
      out[row] = np.array(ids, dtype=np.int32)
      if self._n_cached + len(ids) + _ENTRY_PIECES <= CACHED_PIECES:
        self._cache[keys[row]] = out[row]
        self._n_cached += len(ids) + _ENTRY_PIECES
    return out

  def tokenize(self, seq: str) -> np.ndarray:
    """One sequence as given (sentencepiece sees its letters), for tests and tools."""
    return self.rows([self.sp.encode(seq.upper())], np.array([True]))[0]

  def spans(self, codes_N: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A whole sequence's piece ids and the [start, end) of each piece's nucleotides."""
    text = _LETTERS[codes_N].tobytes().decode()
    pieces = self.sp.encode(text, return_type="proto").pieces
    return (np.array([p.id for p in pieces], np.int32), np.array([p.begin for p in pieces], np.int64),
            np.array([p.end for p in pieces], np.int64))

  def token_nucleotides(self) -> np.ndarray:
    table = np.full((self.vocab_size, self.max_piece), -1, dtype=np.int8)
    for i in np.flatnonzero(self.is_nucleotides):
      table[i, :len(self.pieces[i])] = ["ACGT".index(c) for c in self.pieces[i]]
    return table


def tokenizer(cfg: Config) -> KmerTokenizer | BpeTokenizer:
  if cfg.encoding_method == "bpe":
    return BpeTokenizer(cfg.bpe_path, cfg.context_length)
  return KmerTokenizer(1 if cfg.encoding_method == "nuc" else cfg.k, cfg.context_length)
