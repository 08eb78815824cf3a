"""FASTA access through pyfastx, and sequence normalisation.

Sequences are read on demand through a pyfastx index, so host memory does not grow
with the file (gzipped files are the exception: random access into them is ~100x
slower, so they are read once into a compact 1-byte-per-nucleotide cache).
Normalisation: upper case, U -> T, every other letter or symbol -> N.
"""

from __future__ import annotations

import gzip
import os

import numpy as np
import pyfastx

from nlm_jax.config import UserError

# Nucleotide codes shared by the sampler and the model's one-hot table.
A, C, G, T, N = 0, 1, 2, 3, 4
PAD = 5  # a position past the end of the sequence
ALPHABET = "ACGTN"

_CODES = np.full(256, N, dtype=np.uint8)
for _i, _c in enumerate("ACGT"):
  _CODES[ord(_c)] = _CODES[ord(_c.lower())] = _i
_CODES[ord("U")] = _CODES[ord("u")] = T


# What a nucleotide sequence may hold: IUPAC codes and U, either case, and the gaps - and
# . (all but A, C, G, T, U read as N). Anything else (E, F, L, P, *, digits) is refused
# where sequences are embedded: it suggests a protein file.
NUCLEOTIDE_LETTERS = "ACGTUNRYKMSWBDHV"
_FOREIGN = np.ones(256, dtype=bool)
for _c in NUCLEOTIDE_LETTERS:
  _FOREIGN[ord(_c)] = _FOREIGN[ord(_c.lower())] = False
_FOREIGN[ord("-")] = _FOREIGN[ord(".")] = False


def check_letters(seq: str, what: str, allowed: str = "") -> None:
  """Raises UserError naming the first character of `seq` that is no nucleotide letter."""
  chars = np.frombuffer(seq.encode("latin-1", "replace"), dtype=np.uint8)
  foreign = _FOREIGN[chars]
  for c in allowed:
    foreign &= chars != ord(c)
  if foreign.any():
    i = int(np.argmax(foreign))
    raise UserError(f"{what} holds {seq[i]!r} at position {i + 1}, which is no nucleotide letter "
                    f"({NUCLEOTIDE_LETTERS}, any case, or a gap): is it a protein sequence? Fix "
                    "or remove it.")


def encode(seq: str) -> np.ndarray:
  """Maps a sequence to uint8 codes A0 C1 G2 T3 N4 (U is T, anything else is N)."""
  return _CODES[np.frombuffer(seq.encode("latin-1"), dtype=np.uint8)]


def _check_fasta_file(path: str, what: str) -> None:
  if not os.path.exists(path):
    raise UserError(f"{what} FASTA {path!r} does not exist: check the path (and --data_dir).")
  if os.path.isdir(path):
    raise UserError(f"{what} FASTA {path!r} is a folder: pass a FASTA file.")
  if os.path.getsize(path) == 0:
    raise UserError(f"{what} FASTA {path!r} is empty: pass a FASTA file with at least one record.")
  opener = gzip.open if _is_gzip(path) else open
  try:
    with opener(path, "rb") as f:
      head = f.read(4096).lstrip()
  except (OSError, EOFError) as e:
    raise UserError(f"{what} FASTA {path!r} cannot be read ({e}): check the file.") from None
  if not head:
    raise UserError(f"{what} FASTA {path!r} holds no records: pass a FASTA file with at least one record.")
  if not head.startswith(b">"):
    raise UserError(f"{what} file {path!r} is not FASTA (it does not start with a '>' header line): "
                    "pass a FASTA file.")


def _is_gzip(path: str) -> bool:
  with open(path, "rb") as f:
    return f.read(2) == b"\x1f\x8b"


class Fasta:
  """Random access to the normalised sequences of one FASTA file.

  Not thread-safe and not fork-safe (pyfastx): open one per thread or process.
  cache_gzip=False skips the cache of a gzipped file, for callers that only read
  `lengths` and stream the records themselves.
  """

  def __init__(self, path: str, what: str = "the", cache_gzip: bool = True):
    _check_fasta_file(path, what)
    self.path = path
    try:
      # memory_index: no .fxi file next to the FASTA, so no stale index after the file
      # changes, and read-only folders work.
      self._fa = pyfastx.Fasta(path, memory_index=True)
    except Exception as e:  # pyfastx raises RuntimeError/SystemError with opaque texts.
      raise UserError(f"{what} FASTA {path!r} cannot be parsed ({e}): check that it is FASTA.") from None
    self.lengths = np.fromiter((len(s) for s in self._fa), dtype=np.int64, count=len(self._fa))
    if len(self.lengths) == 0:
      raise UserError(f"{what} FASTA {path!r} holds no records: pass a FASTA file with at least one record.")
    empty = np.flatnonzero(self.lengths == 0)
    if len(empty):
      names = ", ".join(self._fa[int(i)].name for i in empty[:3])
      raise UserError(f"{what} FASTA {path!r} has {len(empty)} record(s) without sequence ({names}"
                      f"{', ...' if len(empty) > 3 else ''}): remove them.")
    self._cache = None
    if self._fa.is_gzip and cache_gzip:
      self._offsets = np.concatenate([[0], np.cumsum(self.lengths)])
      self._cache = np.empty(int(self._offsets[-1]), dtype=np.uint8)
      for i, record in enumerate(pyfastx.Fastx(path, uppercase=False)):
        self._cache[self._offsets[i]:self._offsets[i + 1]] = encode(record[1])

  def __len__(self) -> int:
    return len(self.lengths)

  def name(self, i: int) -> str:
    return self._fa[i].name

  def codes(self, i: int, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Codes of sequence i, nucleotides [start, stop)."""
    stop = int(self.lengths[i]) if stop is None else min(stop, int(self.lengths[i]))
    if self._cache is not None:
      return self._cache[self._offsets[i] + start:self._offsets[i] + stop]
    return encode(self._fa[i][start:stop].seq)
