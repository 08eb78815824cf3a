"""FASTA files: what they say, an index kept on disk, and random access to normalised
sequences.

What a file says is decided by one pass over it (`_Scan`, in blocks of whole records):
lines end at '\n'; a line that starts with '>' is a header, and the first word of the
header, read as UTF-8 with other bytes escaped, names the record; every other byte but
ASCII whitespace is sequence. A UTF-8 BOM is skipped. Any bytes are either read so or
refused with one line (a NUL byte, sequence before the first header, CR-only line ends,
a record without sequence).

The pass keeps what later opens need in an index on disk (filecache.py): each record's
length, name and place in the file, a histogram of the sequence bytes and the identity
of the content (size and CRC-32, which a resume checks). Later opens map these arrays:
they take milliseconds whatever the file's size, and memory holds only the pages a run
touches, never a Python object per record.

Random access: a plain file whose records keep one line width (samtools faidx's layout,
as nearly every FASTA file does) is read in place through a memory map; a gzipped file,
or one with ragged lines or spaces inside sequence lines, is decoded once into a file of
1-byte codes in the index, mapped the same way.

Normalisation: upper case, U -> T, every other letter or symbol -> N.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import logging
import os
import re
import time
import zlib
from typing import IO, Callable, Iterator

import numpy as np

from nlm_jax import filecache
from nlm_jax.errors import UserError

log = logging.getLogger(__name__)

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
  if not isinstance(seq, str):
    raise UserError(f"{what} is a {type(seq).__name__}, not a string of nucleotide letters.")
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
    raise UserError(f"{what} FASTA {path!r} does not exist: check the path.")
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


def _open(path: str) -> tuple[IO[bytes], IO[bytes]]:
  """(the file's content, the file itself: its position tells how much was read)."""
  raw = open(path, "rb")
  return (gzip.GzipFile(fileobj=raw) if _is_gzip(path) else raw), raw


_BLOCK = 1 << 24  # bytes read at a time; a block is cut after its last whole record
_BOM = b"\xef\xbb\xbf"
_WHITESPACE = b" \t\n\v\f\r"  # never part of a sequence (bytes.split's whitespace)
_IS_SPACE = np.zeros(256, dtype=bool)
_IS_SPACE[list(_WHITESPACE)] = True
_IS_SPACE_BUT_NL = _IS_SPACE.copy()
_IS_SPACE_BUT_NL[ord("\n")] = False
_CODE_TABLE = _CODES.tobytes()  # bytes.translate's table: a byte's code
_TARGET_BYTES = list(b"ACGTUacgtu")  # what masked modelling can predict
# The histogram of sequence bytes counts the first 64 MiB of the content, every block
# until one holds a target, and every 16th block after: a sample of the alphabet, which
# costs a fifth of the pass when taken whole.
_HISTOGRAM_HEAD, _HISTOGRAM_EVERY = 1 << 26, 16
_PROGRESS_S = 10.0  # seconds between progress lines of a long pass
_WORD = re.compile(rb"[ \t\v\f\r]*(\S*)")  # a header's first word, within its line


@dataclasses.dataclass
class _Block:
  """What a block of R whole records says."""
  base: int  # the block's place in the content
  lengths: np.ndarray  # (R,) letters of each record
  seq_starts: np.ndarray  # (R,) where each record's sequence lines start in the block
  seq_stops: np.ndarray  # (R,) and where they stop (the next header)
  name_starts: np.ndarray  # (R,) where each name starts in the block
  name_lengths: np.ndarray  # (R,)
  # samtools faidx's layout: every line of record r holds widths[r] letters (the last
  # fewer) and ends in `line_end` bytes.
  widths: np.ndarray  # (R,)
  line_end: int  # 1 ('\n') or 2 ('\r\n')
  regular: bool  # every record in that layout: readable in place
  histogram: np.ndarray | None  # (256,) the bytes of sequence lines, where sampled
  codes: bytes | None  # _Scan(codes=True): the records' codes, one after another


class _Scan:
  """The one pass over a FASTA file (module docstring), in blocks of whole records.

  Iterating yields (the block, _Block); afterwards `identity` is the size and CRC-32
  of the (decompressed) content without its BOM. Every array comes from NumPy over the
  block's bytes, with no Python work per record or line (but for a name after a space:
  "> name"). codes=True decodes the sequences too.
  """

  def __init__(self, path: str, what: str, codes: bool = False):
    self.path, self.what, self.codes = path, what, codes
    self.identity = ""
    self._lines = 0  # lines before the block being read
    self._sampled = 0  # sequence bytes in the histogram so far
    self._targets = False  # the histogram holds a target

  def __iter__(self) -> Iterator[tuple[bytes, _Block]]:
    try:
      content, raw = _open(self.path)
      with content, raw:
        for i, (base, data) in enumerate(self._blocks(content, raw)):
          yield data, self._parse(data, base, histogram=(
              self._sampled < _HISTOGRAM_HEAD or not self._targets or i % _HISTOGRAM_EVERY == 0))
    except (OSError, EOFError, zlib.error) as e:
      raise UserError(f"{self.what} FASTA {self.path!r} cannot be read ({e}): check the file.") from None

  def _blocks(self, content: IO[bytes], raw: IO[bytes]) -> Iterator[tuple[int, memoryview]]:
    """(place in the content, block), each block cut before a '>' that opens a line. The
    blocks are views of one buffer, read into in place: each is valid until the next."""
    head = content.read(len(_BOM))
    place = len(_BOM) if head == _BOM else 0
    head = head[place:]
    crc, size = zlib.crc32(head), len(head)
    buf = bytearray(max(_BLOCK, len(head)))
    buf[:len(head)] = head
    kept = len(head)  # bytes of a record that the last block did not end
    total, start = os.fstat(raw.fileno()).st_size, time.monotonic()
    next_line = start + _PROGRESS_S
    while True:
      if kept == len(buf):  # a record longer than the buffer
        buf = buf + bytes(len(buf))  # a new buffer: the last block may still be in use
      view = memoryview(buf)
      got = content.readinto(view[kept:])
      if not got:
        break
      crc, size = zlib.crc32(view[kept:kept + got], crc), size + got
      end, cut = kept + got, buf.rfind(b"\n>", max(kept - 1, 0), kept + got)
      if cut < 0:
        kept = end
        continue
      yield place, view[:cut + 1]
      place += cut + 1
      rest = bytes(view[cut + 1:end])
      buf[:len(rest)], kept = rest, len(rest)
      if time.monotonic() > next_line:
        next_line += _PROGRESS_S
        log.info("indexing %s: %.1f of %.1f GB read in %d s", self.path, raw.tell() / 1e9,
                 total / 1e9, time.monotonic() - start)
    if kept:
      yield place, memoryview(buf)[:kept]
    self.identity = f"{size}:{crc:08x}"

  def _parse(self, data: memoryview, base: int, histogram: bool) -> _Block:
    buf = np.frombuffer(data, np.uint8)
    if buf.min() == 0:
      text = bytes(data)
      line = self._lines + text.count(b"\n", 0, text.find(b"\0")) + 1
      raise UserError(f"{self.what} FASTA {self.path!r} holds a NUL byte (line {line}): is it a "
                      "binary or damaged file? Fix or replace it.")
    low = np.flatnonzero(buf <= ord(" "))  # whitespace among the other control bytes
    low_c = buf[low]
    space = np.append(low[_IS_SPACE[low_c]], len(buf))  # whitespace, then the end
    inner = low[_IS_SPACE_BUT_NL[low_c]]  # whitespace but line ends
    ends = low[low_c == ord("\n")]
    closed = len(ends) > 0 and ends[-1] == len(buf) - 1  # else the file's last line has no '\n'
    if not closed:
      ends = np.append(ends, len(buf) - 1)
    starts = np.concatenate([[0], ends[:-1] + 1])
    self._lines += len(ends)
    header = np.flatnonzero(buf[starts] == ord(">"))  # the lines that open records
    first = int(starts[header[0]]) if len(header) else len(buf)
    if np.searchsorted(space, first) < first:  # only the file's first block has such lines
      raise UserError(f"{self.what} file {self.path!r} is not FASTA (it does not start with a "
                      "'>' header line): pass a FASTA file.")
    # Record r: its header line, then the lines of its sequence up to the next header.
    seq_start = ends[header] + 1
    seq_stop = np.append(starts[header[1:]], len(buf))
    n_lines = np.diff(np.append(header, len(ends))) - 1
    n_line_ends = n_lines.copy()
    if not closed and len(header) and n_lines[-1]:
      n_line_ends[-1] -= 1  # the file's last line
    n_inner = np.searchsorted(inner, seq_stop) - np.searchsorted(inner, seq_start)
    lengths = seq_stop - seq_start - n_line_ends - n_inner
    name_starts, name_lengths = self._names(data, starts[header] + 1, space)

    # samtools faidx's layout: each record's lines hold its first line's letters W (the
    # last fewer, blank lines after it), every line ends alike, no whitespace inside.
    line_end = 2 if (low_c == ord("\r")).any() else 1
    first_of = np.cumsum(n_lines) - n_lines  # each record's first in the sequence lines
    seq = np.repeat(np.arange(len(header)), n_lines)  # each sequence line's record
    line = np.arange(len(seq)) + np.repeat(header + 1 - first_of, n_lines)  # its line
    letters = ends[line] + 1 - starts[line] - line_end
    if not closed and len(line) and line[-1] == len(ends) - 1:
      letters[-1] += line_end
      line = line[:-1]  # the lines with an end, below
    widths = np.zeros(len(header), np.int64)
    widths[n_lines > 0] = letters[first_of[n_lines > 0]]
    width = widths[seq]
    expected = np.clip(lengths[seq] - (np.arange(len(seq)) - first_of[seq]) * width, 0, width)
    regular = (np.array_equal(letters, expected)  # and the only whitespace inside: CRs of CRLF
               and np.array_equal(n_inner, n_line_ends * (line_end - 1))
               and (line_end == 1 or bool((buf[ends[line] - 1] == ord("\r")).all())))
    hist = codes = None
    if histogram or self.codes:
      is_seq = np.zeros(len(ends), dtype=bool)
      is_seq[header[0] + 1 if len(header) else len(ends):] = True
      is_seq[header] = False
      seq_bytes = buf[np.repeat(is_seq, ends + 1 - starts)]
      if histogram:
        hist = _histogram(seq_bytes)
        self._sampled += len(seq_bytes)
        self._targets |= bool(hist[_TARGET_BYTES].any())
      if self.codes:
        codes = seq_bytes.tobytes().translate(_CODE_TABLE, _WHITESPACE)
    return _Block(base, lengths, seq_start, seq_stop, name_starts, name_lengths, widths, line_end,
                  regular, hist, codes)

  @staticmethod
  def _names(data: memoryview, start: np.ndarray, space: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(start, length) of each name: the first word after each '>' (at start - 1); `space`
    holds the block's whitespace places, sorted, then its end."""
    end = space[np.searchsorted(space, start)]
    for i in np.flatnonzero(end == start):  # "> name": the word after the space
      word = _WORD.match(data, int(start[i]))
      start[i], end[i] = word.start(1), word.end(1)
    return start, end - start


def _ranges(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """np.concatenate([np.arange(a[i], b[i]) for i ...]), without the Python loop."""
  n = b - a
  return np.repeat(a - (np.cumsum(n) - n), n) + np.arange(int(n.sum()))


def _histogram(x_N: np.ndarray) -> np.ndarray:
  """Counts of each byte value (256,): np.bincount over byte pairs, half its work."""
  pairs = np.bincount(x_N[:len(x_N) // 2 * 2].view(np.uint16), minlength=1 << 16).reshape(256, 256)
  counts = pairs.sum(0) + pairs.sum(1)
  if len(x_N) % 2:
    counts[x_N[-1]] += 1
  return counts


def records(path: str, what: str = "the") -> Iterator[tuple[str, str]]:
  """(name, sequence) of every record in file order, read as Fasta reads it; the
  sequence keeps its letters (one character per byte, latin-1). Streams the file: for
  reading every record once (embed, classify, BPE fitting)."""
  _check_fasta_file(path, what)
  for view, b in _Scan(path, what):
    data = bytes(view)
    for i in range(len(b.lengths)):
      name = data[b.name_starts[i]:b.name_starts[i] + b.name_lengths[i]]
      yield (name.decode("utf-8", "backslashreplace"),
             data[b.seq_starts[i]:b.seq_stops[i]].translate(None, _WHITESPACE).decode("latin-1"))


# ----------------------------------------------------------------------------- the index

_VERSION = 1  # of the index's files: an index of another version is built anew
# Every index: the records' lengths, and where each name is (in the file; in names.uint8
# for a gzipped file). A file read in place adds where each record's sequence starts
# and its line width; one that is not, its codes and where each record's codes start.
_ARRAYS = ("lengths.int64", "name_starts.int64", "name_lengths.int32")
_IN_PLACE = ("offsets.int64", "widths.int64")
_CODE_FILES = ("codes.uint8", "starts.int64")  # codes.uint8 first: it tells the pair is whole
_META = {"records": int, "nucleotides": int, "name_bytes": int, "identity": str, "in_place": bool,
         "line_end": int, "histogram": list, "empty": int, "empty_names": list}


def _build(entry: filecache.Entry, path: str, what: str, gzipped: bool, codes: bool) -> dict:
  """Reads the file once into the entry's files (its codes too if `codes`); returns the
  meta (_META)."""
  start = time.monotonic()
  scan = _Scan(path, what, codes=codes)
  n = nucleotides = name_bytes = n_empty = 0
  line_ends, regular = set(), not gzipped
  histogram = np.zeros(256, np.int64)
  empty: list[str] = []  # the first three records without sequence, for the error
  with contextlib.ExitStack() as stack:
    names = ("names.uint8",) if gzipped else _IN_PLACE  # a gzipped file is never read in place
    files = {name: stack.enter_context(open(entry.path(name), "wb")) for name in _ARRAYS + names}
    coder = stack.enter_context(_Coder(entry.path)) if codes else None
    for data, b in scan:
      for i in np.flatnonzero(b.lengths == 0)[:3 - len(empty)]:
        empty.append(bytes(data[b.name_starts[i]:b.name_starts[i] + b.name_lengths[i]]).decode(
            "utf-8", "backslashreplace"))
      n_empty += int((b.lengths == 0).sum())
      arrays = {"lengths.int64": b.lengths, "name_lengths.int32": b.name_lengths.astype(np.int32),
                "offsets.int64": b.base + b.seq_starts, "widths.int64": b.widths}
      if gzipped:  # the names, one after another
        arrays["names.uint8"] = np.frombuffer(data, np.uint8)[
            _ranges(b.name_starts, b.name_starts + b.name_lengths)]
        arrays["name_starts.int64"] = name_bytes + np.cumsum(b.name_lengths) - b.name_lengths
        name_bytes += int(b.name_lengths.sum())
      else:  # the names in the file
        arrays["name_starts.int64"] = b.base + b.name_starts
      for name, f in files.items():
        f.write(arrays[name].tobytes())
      if coder:
        coder.add(b)
      n += len(b.lengths)
      nucleotides += int(b.lengths.sum())
      regular &= b.regular
      line_ends.add(b.line_end)
      if b.histogram is not None:
        histogram += b.histogram
  in_place = regular and len(line_ends) == 1
  for name in () if in_place or gzipped else _IN_PLACE:
    os.remove(entry.path(name))
  seconds = time.monotonic() - start
  if seconds > 2:
    log.info("indexed %s in %.1f s: %d records, %d nt (index in %s)", path, seconds, n, nucleotides,
             os.path.dirname(entry.folder))
  return {"records": n, "nucleotides": nucleotides, "name_bytes": name_bytes,
          "identity": scan.identity, "in_place": in_place, "line_end": min(line_ends, default=1),
          "histogram": histogram.tolist(), "empty": n_empty, "empty_names": empty}


class _Coder:
  """Writes the codes of a file that is not read in place (codes.uint8) and where each
  record's codes start (starts.int64): path(name) is where file `name` goes."""

  def __init__(self, path: Callable[[str], str]):
    self.files = [open(path(name), "wb") for name in _CODE_FILES]
    self.nucleotides = 0

  def add(self, b: _Block) -> None:
    codes, starts = self.files
    codes.write(b.codes)
    starts.write((self.nucleotides + np.cumsum(b.lengths) - b.lengths).tobytes())
    self.nucleotides += int(b.lengths.sum())

  def __enter__(self) -> _Coder:
    return self

  def __exit__(self, *exc) -> None:
    for f in self.files:
      f.close()


def _write_codes(path: str, what: str, tmp: Callable[[str], str]) -> None:
  """_Coder's files for a file indexed without them."""
  with _Coder(tmp) as coder:
    for _, b in _Scan(path, what, codes=True):
      coder.add(b)


def _load(entry: filecache.Entry) -> filecache.Entry:
  """The entry, if its meta and arrays are whole (else filecache.Damaged)."""
  meta = entry.meta
  missing = [k for k, kind in _META.items() if type(meta.get(k)) is not kind]
  if missing:
    raise filecache.Damaged(f"meta.json lacks {', '.join(missing)}")
  n = meta["records"]
  for name in _ARRAYS + (_IN_PLACE if meta["in_place"] else ()):
    entry.array(name, n)
  if meta["name_bytes"]:
    entry.array("names.uint8", meta["name_bytes"])
  if entry.has("codes.uint8"):
    entry.array("codes.uint8", meta["nucleotides"])
    entry.array("starts.int64", n)
  return entry


class Fasta:
  """Random access to the normalised sequences of one FASTA file, through its index
  (module docstring): the first open reads the file once, later ones map the index.

  Reads with pread and maps the index read-only: safe to share across threads and forked
  processes.
  random_access=False is for callers that stream the records themselves (`records`):
  then a file that is not read in place is not decoded into codes. targets=True refuses
  a file without any A, C, G, T or U.
  """

  def __init__(self, path: str, what: str = "the", random_access: bool = True,
               targets: bool = False):
    _check_fasta_file(path, what)
    self.path = path
    gzipped = _is_gzip(path)
    index = filecache.load_or_build(
        path, "fasta", _VERSION, lambda e: _build(e, path, what, gzipped, random_access and gzipped),
        _load)
    meta = index.meta
    n = meta["records"]
    if n == 0:
      raise UserError(f"{what} FASTA {path!r} holds no records: pass a FASTA file with at least one record.")
    if meta["empty"]:
      names = ", ".join(meta["empty_names"])
      raise UserError(f"{what} FASTA {path!r} has {meta['empty']} record(s) without sequence ({names}"
                      f"{', ...' if meta['empty'] > 3 else ''}): remove them.")
    # A sample of the sequence bytes (_HISTOGRAM_HEAD): which letters the file holds.
    self.histogram = np.array(meta["histogram"], dtype=np.int64)
    if targets and not self.histogram[_TARGET_BYTES].any():
      raise UserError(f"{what} FASTA {path!r} holds no A, C, G, T or U (only N, gaps or other "
                      "symbols): there is nothing to predict. Pass nucleotide sequences.")
    self.identity = meta["identity"]  # the size and CRC-32 of the content
    self.lengths = index.array("lengths.int64", n)
    self._name_starts = index.array("name_starts.int64", n)
    self._name_lengths = index.array("name_lengths.int32", n)
    self._in_place = meta["in_place"]
    # Sequences and names are read with pread, never through a memory map: the pages of a
    # mapped file that a run touched (and those around them) stay in its resident memory,
    # which grew to the file's size in 10 s of sampling from a 4 GB file.
    if gzipped:
      self._names = open(index.path("names.uint8"), "rb", buffering=0)
    else:
      self._names = open(path, "rb", buffering=0)
    if self._in_place:
      self._starts, self._widths = (index.array(name, n) for name in _IN_PLACE)
      self._line_end = meta["line_end"]
      self._sequences = self._names
    elif random_access:
      if not index.has("codes.uint8"):
        index.add(lambda tmp: _write_codes(path, what, tmp))
      self._sequences = open(index.path("codes.uint8"), "rb", buffering=0)
      self._starts = index.array("starts.int64", n)

  def __len__(self) -> int:
    return len(self.lengths)

  @property
  def in_place(self) -> bool:
    """Whether sequences are read from the file itself (else from decoded codes)."""
    return self._in_place

  def name(self, i: int) -> str:
    name = os.pread(self._names.fileno(), int(self._name_lengths[i]), int(self._name_starts[i]))
    return name.decode("utf-8", "backslashreplace")

  def codes(self, i: int, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Codes of sequence i, nucleotides [start, stop)."""
    stop = int(self.lengths[i]) if stop is None else min(stop, int(self.lengths[i]))
    if stop <= start:
      return np.empty(0, np.uint8)
    first, fd = int(self._starts[i]), self._sequences.fileno()
    if not self._in_place:
      return np.frombuffer(os.pread(fd, stop - start, first + start), np.uint8)
    width = int(self._widths[i])
    line = width + self._line_end
    a = first + start // width * line + start % width
    b = first + (stop - 1) // width * line + (stop - 1) % width + 1
    return np.frombuffer(os.pread(fd, b - a, a).translate(_CODE_TABLE, b"\r\n"), np.uint8)


# --------------------------------------------------------------------- what the data holds

# A protein file's letters are about a third E, F, I, L, P and Q (letters no nucleotide
# alphabet uses); a nucleotide file's none, or a few symbols. Above this share of letters
# that are no nucleotide, a file is refused: its letters would all be read as N.
FOREIGN_SHARE = 0.1
_LETTER = ~_IS_SPACE  # what the histogram counts as letters: all but whitespace


def check_alphabet(fa: Fasta, what: str) -> None:
  """Refuses a file whose sampled sequence letters (Fasta.histogram: no extra pass over the
  file) are more than FOREIGN_SHARE no nucleotide letter (NUCLEOTIDE_LETTERS, either case,
  gaps): the line says which letters it found most."""
  counts = np.where(_FOREIGN & _LETTER, fa.histogram, 0)
  letters = int(fa.histogram[_LETTER].sum())
  if counts.sum() <= FOREIGN_SHARE * letters:
    return
  top = np.argsort(counts)[::-1][:5]
  found = ", ".join(f"{bytes([b]).decode('latin-1')!r} {counts[b] / letters:.0%}"
                    for b in top if counts[b])
  raise UserError(f"{what} FASTA {fa.path!r} is not nucleotide sequences: {counts.sum() / letters:.0%} "
                  f"of its letters are none ({found}); is it a protein file? Pass DNA or RNA "
                  f"({NUCLEOTIDE_LETTERS}, either case, gaps), with other symbols replaced by N.")


def shared_share(a: Fasta, b: Fasta, sample: int = 200) -> float:
  """The share of the smaller file's records whose sequence (normalised: case, U as T) the
  other file holds too; 1.0 for files of the same content. Estimated from `sample` of its
  records (all of a smaller file, seeded), each compared with the other's records of its
  length: a few thousand reads of the index, whatever the files' sizes."""
  if a.identity == b.identity:
    return 1.0
  small, big = sorted((a, b), key=len)
  rng = np.random.default_rng(0)
  picked = np.arange(len(small)) if len(small) <= sample else rng.choice(len(small), sample, replace=False)
  digest = lambda fa, i: hashlib.blake2b(fa.codes(int(i)).tobytes(), digest_size=16).digest()
  held = {digest(big, i) for i in np.flatnonzero(np.isin(big.lengths, small.lengths[picked]))}
  return sum(digest(small, i) in held for i in picked) / len(picked)
