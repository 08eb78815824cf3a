"""FASTA access, and sequence normalisation.

Every file is first read once by a NumPy reader that defines what a FASTA file says
(any bytes: each is either read as that reader says or refused with one line). Where
pyfastx's index reads the file the same way, sequences are then read on demand through
it, so host memory does not grow with the file; otherwise (gzipped files too: random
access into them is ~100x slower) they are kept in a compact 1-byte-per-nucleotide cache.
Normalisation: upper case, U -> T, every other letter or symbol -> N.
"""

from __future__ import annotations

import gzip
import os
import zlib
from typing import Iterator

import numpy as np
import pyfastx

from nlm_jax.errors import UserError

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
  if not os.path.isfile(path):
    raise UserError(f"{what} FASTA {path!r} is no regular file (a pipe or a device): it is read "
                    "more than once, so save it to a file first.")
  if os.path.getsize(path) == 0:
    raise UserError(f"{what} FASTA {path!r} is empty: pass a FASTA file with at least one record.")
  opener = gzip.open if _is_gzip(path) else open
  try:
    with opener(path, "rb") as f:
      head = f.read(4096).removeprefix(_BOM).lstrip()
  except (OSError, EOFError) as e:
    raise UserError(f"{what} FASTA {path!r} cannot be read ({e}): check the file.") from None
  if b"\r" in head and b"\n" not in head:
    raise UserError(f"{what} FASTA {path!r} ends its lines in CR alone (classic Mac OS): convert "
                    "them to LF or CRLF line endings.")
  if not head:
    raise UserError(f"{what} FASTA {path!r} holds no records: pass a FASTA file with at least one record.")
  if not head.startswith(b">"):
    raise UserError(f"{what} file {path!r} is not FASTA (it does not start with a '>' header line): "
                    "pass a FASTA file.")


def _is_gzip(path: str) -> bool:
  with open(path, "rb") as f:
    return f.read(2) == b"\x1f\x8b"


_BLOCK = 1 << 22  # bytes the reader takes at a time
_BOM = b"\xef\xbb\xbf"
_SPACE = np.zeros(256, dtype=np.uint8)  # ASCII whitespace: never part of a sequence
_SPACE[list(b" \t\n\v\f\r")] = 1
_TARGET = (_CODES < N).astype(np.uint8)  # A, C, G, T, U in either case: what MLM predicts


class _Reader:
  """The reference reading of a FASTA file: one pass in blocks of whole lines.

  Lines end at '\n'; a line starting with '>' is a header, and the first word of the
  header, read as UTF-8 with other bytes escaped, names the record; all other bytes but
  whitespace are sequence (blank lines, '\r' and spaces are dropped). A UTF-8 BOM is
  skipped; a NUL byte is refused. Iterating yields, per block, (names of the records it
  opens, letters per record with [0] continuing the record before, letters or None).

  After the pass, `identity` is the size and CRC-32 of the (decompressed) bytes,
  `targets` the number of A, C, G, T and U (what masked modelling can predict), and
  `indexable` says whether pyfastx's index reads the file the same way: it does not
  with blank lines (an empty line right after a header makes its slicing divide by zero:
  SIGFPE), whitespace inside sequence lines or NUL bytes (it returns other letters),
  bytes >= 128 or a BOM, or lines ending now in CRLF, now in LF.
  """

  def __init__(self, path: str, what: str, letters: bool):
    self.path, self.what, self.letters = path, what, letters
    self.indexable, self.identity, self.targets = True, "", 0
    self._crlf: bool | None = None
    self._lines = 0
    self._opened = False  # a header was seen: sequence before it would be no FASTA

  def __iter__(self) -> Iterator[tuple[list[str], np.ndarray, np.ndarray | None]]:
    crc, size, rest = 0, 0, b""
    try:
      with (gzip.open if _is_gzip(self.path) else open)(self.path, "rb") as f:
        while True:
          data = f.read(_BLOCK)
          if size == 0 and data.startswith(_BOM):
            self.indexable = False
            data = data[len(_BOM):]
          crc, size = zlib.crc32(data, crc), size + len(data)
          block = rest + data
          cut = len(block) if not data else block.rfind(b"\n") + 1
          block, rest = block[:cut], block[cut:]
          if block:
            yield self._read(block)
          if not data:
            break
    except (OSError, EOFError, zlib.error) as e:
      raise UserError(f"{self.what} FASTA {self.path!r} cannot be read ({e}): check the file.") from None
    self.identity = f"{size}:{crc:08x}"

  def _read(self, block: bytes) -> tuple[list[str], np.ndarray, np.ndarray | None]:
    buf = np.frombuffer(block, np.uint8)
    if (nul := block.find(b"\0")) >= 0:
      line = self._lines + block.count(b"\n", 0, nul) + 1
      raise UserError(f"{self.what} FASTA {self.path!r} holds a NUL byte (line {line}): is it a "
                      "binary or damaged file? Fix or replace it.")
    ends = np.flatnonzero(buf == 10)  # every line but the file's last ends in '\n'
    if len(ends) == 0 or ends[-1] != len(buf) - 1:
      ends = np.append(ends, len(buf) - 1)
    starts = np.concatenate([[0], ends[:-1] + 1])
    self._lines += len(starts)
    is_header = buf[starts] == ord(">")
    names = [_name(block[a + 1:b + 1]) for a, b in zip(starts[is_header], ends[is_header])]
    space = _SPACE[buf]
    space_L = np.add.reduceat(space, starts, dtype=np.int64)
    letters_L = (ends + 1 - starts) - space_L
    letters_L[is_header] = 0
    record_L = np.cumsum(is_header)  # 0: the record the block continues
    if not self._opened and letters_L[record_L == 0].any():
      raise UserError(f"{self.what} file {self.path!r} is not FASTA (it does not start with a "
                      "'>' header line): pass a FASTA file.")
    self._opened |= bool(is_header.any())
    self._check_indexable(buf, starts, ends, is_header, letters_L, space_L)
    self.targets += int(np.add.reduceat(_TARGET[buf], starts, dtype=np.int64)[~is_header].sum())
    counts = np.bincount(record_L, weights=letters_L, minlength=len(names) + 1).astype(np.int64)
    letters = None
    if self.letters:
      keep = np.repeat(~is_header, ends + 1 - starts) & (space == 0)
      letters = buf[keep]
    return names, counts, letters

  def _check_indexable(self, buf: np.ndarray, starts: np.ndarray, ends: np.ndarray,
                       is_header: np.ndarray, letters_L: np.ndarray, space_L: np.ndarray) -> None:
    closed_L = buf[ends] == 10
    crlf_L = closed_L & (ends > starts) & (buf[np.maximum(ends - 1, 0)] == 13)
    endings = set(crlf_L[closed_L].tolist()) | ({self._crlf} - {None})
    if len(endings) == 1:
      self._crlf = endings.pop()
    seq_L = ~is_header
    inner_space_L = space_L - closed_L - crlf_L  # whitespace before the line's end
    if (len(endings) > 1 or (letters_L[seq_L] == 0).any() or inner_space_L[seq_L].any()
        or (buf >= 128).any()):
      self.indexable = False


def _name(header: bytes) -> str:
  words = header.split(None, 1)
  return words[0].decode("utf-8", "backslashreplace") if words else ""


def records(path: str, what: str = "the") -> Iterator[tuple[str, str]]:
  """(name, sequence) of every record in file order, read as Fasta reads it; the
  sequence keeps its letters (one character per byte, latin-1)."""
  _check_fasta_file(path, what)
  name, parts = None, []
  for names, counts, letters in _Reader(path, what, letters=True):
    pieces = np.split(letters, np.cumsum(counts)[:-1])
    parts.append(pieces[0])
    for new, piece in zip(names, pieces[1:]):
      if name is not None:
        yield name, np.concatenate(parts).tobytes().decode("latin-1")
      name, parts = new, [piece]
  if name is not None:
    yield name, np.concatenate(parts).tobytes().decode("latin-1")


class Fasta:
  """Random access to the normalised sequences of one FASTA file.

  The file is read once by `_Reader`, which checks it and finds out whether pyfastx's
  index reads it the same way; if so, sequences are read on demand through that index,
  so host memory does not grow with the file; otherwise (and for gzipped files, where
  random access is ~100x slower) they are kept in a compact 1-byte-per-nucleotide cache.
  Not thread-safe and not fork-safe (pyfastx): open one per thread or process.
  random_access=False reads only names and lengths, for callers that stream the records
  themselves (`records`). targets=True refuses a file without any A, C, G, T or U.
  """

  def __init__(self, path: str, what: str = "the", random_access: bool = True,
               targets: bool = False):
    _check_fasta_file(path, what)
    self.path = path
    gzipped = _is_gzip(path)
    cache = random_access and gzipped
    reader = _Reader(path, what, letters=cache)
    self._names, self.lengths, codes = _collect(reader)
    self.identity = reader.identity
    if len(self.lengths) == 0:
      raise UserError(f"{what} FASTA {path!r} holds no records: pass a FASTA file with at least one record.")
    empty = np.flatnonzero(self.lengths == 0)
    if len(empty):
      names = ", ".join(self._names[int(i)] for i in empty[:3])
      raise UserError(f"{what} FASTA {path!r} has {len(empty)} record(s) without sequence ({names}"
                      f"{', ...' if len(empty) > 3 else ''}): remove them.")
    if targets and reader.targets == 0:
      raise UserError(f"{what} FASTA {path!r} holds no A, C, G, T or U (only N, gaps or other "
                      "symbols): there is nothing to predict. Pass nucleotide sequences.")
    self._fa = None
    if random_access and not gzipped and reader.indexable:
      try:
        # memory_index: no .fxi file next to the FASTA, so no stale index after the file
        # changes, and read-only folders work.
        self._fa = pyfastx.Fasta(path, memory_index=True)
      except Exception as e:  # pyfastx raises RuntimeError/SystemError with opaque texts.
        raise UserError(f"{what} FASTA {path!r} cannot be parsed ({e}): check that it is FASTA.") from None
      if not np.array_equal([len(s) for s in self._fa], self.lengths):  # never seen; be safe
        self._fa = None
    if random_access and self._fa is None and codes is None:
      self._names, self.lengths, codes = _collect(_Reader(path, what, letters=True))
    self._cache = None if codes is None else _CODES[codes]
    self._offsets = np.concatenate([[0], np.cumsum(self.lengths)])

  def __len__(self) -> int:
    return len(self.lengths)

  def name(self, i: int) -> str:
    return self._names[i]

  def codes(self, i: int, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Codes of sequence i, nucleotides [start, stop)."""
    stop = int(self.lengths[i]) if stop is None else min(stop, int(self.lengths[i]))
    if self._cache is not None:
      return self._cache[self._offsets[i] + start:self._offsets[i] + stop]
    return encode(self._fa[i][start:stop].seq)


def _collect(reader: _Reader) -> tuple[list[str], np.ndarray, np.ndarray | None]:
  """(names, lengths, letters or None) of the whole file."""
  names: list[str] = []
  lengths: list[int] = []
  letters: list[np.ndarray] = []
  for block_names, counts, block_letters in reader:
    if lengths:  # the first block opens with a header: nothing to continue there
      lengths[-1] += int(counts[0])
    names += block_names
    lengths += counts[1:].tolist()
    if block_letters is not None:
      letters.append(block_letters)
  codes = np.concatenate(letters) if reader.letters else None
  return names, np.array(lengths, np.int64), codes
