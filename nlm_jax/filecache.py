"""What is derived from an input file, kept on disk so that it is derived once.

Each input file (by its real path) gets a folder in the cache, and each version of the
file a folder in that: named by its stamp, the file's size, modification time and a
CRC-32 of a sample of its bytes (the first and last MiB and 64 pages between), so a
changed file is never read through what was derived from the old one, and checking
costs a `stat` and a few reads whatever the file's size. An entry is built in a folder
of its own and renamed into place when whole: two processes building it at once (two
hosts, two runs) both succeed, one entry stays. An entry that does not load as its
builder wrote it is rebuilt, with a log line.

The cache lies beside the compilation cache ($XDG_CACHE_HOME or ~/.cache, then
nlm_jax/fasta), so read-only data folders work; $NLM_JAX_FASTA_INDEX (or a command's
--fasta_index) moves it, and "none" keeps every entry in a temporary folder for the
process's lifetime, as does a cache folder that cannot be written (with a log line).
"""

from __future__ import annotations

import atexit
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import zlib
from typing import Any, Callable, TypeVar

import numpy as np

log = logging.getLogger(__name__)
T = TypeVar("T")

ENV = "NLM_JAX_FASTA_INDEX"
_SAMPLE_EDGE = 1 << 20  # bytes read at each end of the file for its stamp
_SAMPLE_PAGES = 64  # pages of 4 KiB read between them
_folder: str | None = None  # use_folder's choice; None: the environment's or the default
_temporary: list[str] = []  # this process's temporary cache folder, once made


class Damaged(Exception):
  """An entry that does not load as it was written: it is rebuilt."""


def use_folder(folder: str | None) -> None:
  """Sets the cache folder of this process (None: $NLM_JAX_FASTA_INDEX, else the
  default; "none": a temporary folder, removed at exit)."""
  global _folder
  _folder = folder


def root() -> str:
  """The cache folder in use: writable, made if needed."""
  folder = _folder if _folder is not None else os.environ.get(ENV)
  if folder is None:
    user_cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    folder = os.path.join(user_cache, "nlm_jax", "fasta")
  if folder.lower() != "none":
    try:
      os.makedirs(folder, exist_ok=True)
      if os.access(folder, os.W_OK | os.X_OK):
        return folder
    except OSError:
      pass
  if not _temporary:
    _temporary.append(tempfile.mkdtemp(prefix="nlm_jax_fasta_index_"))
    atexit.register(shutil.rmtree, _temporary[0], ignore_errors=True)
    if folder.lower() != "none":
      log.warning("the FASTA index folder %s cannot be written: indexing into %s for this run "
                  "only (set $%s or --fasta_index to a writable folder to keep the index)",
                  folder, _temporary[0], ENV)
  return _temporary[0]


@dataclasses.dataclass(frozen=True)
class Stamp:
  """What identifies a version of a file without reading all of it."""
  size: int
  mtime_ns: int
  sample_crc: int

  @classmethod
  def of(cls, path: str) -> Stamp:
    st = os.stat(path)
    crc = 0
    with open(path, "rb") as f:
      places = [0, max(st.st_size - _SAMPLE_EDGE, 0)]
      places += np.linspace(_SAMPLE_EDGE, st.st_size - _SAMPLE_EDGE, _SAMPLE_PAGES,
                            dtype=np.int64).tolist() if st.st_size > 2 * _SAMPLE_EDGE else []
      for i, place in enumerate(places):
        f.seek(place)
        crc = zlib.crc32(f.read(_SAMPLE_EDGE if i < 2 else 4096), crc)
    return cls(st.st_size, st.st_mtime_ns, crc)

  def key(self) -> str:
    return f"{self.size:x}-{self.mtime_ns:x}-{self.sample_crc:08x}"


class Entry:
  """A folder of arrays (raw files named NAME.DTYPE, mapped read-only) and meta.json."""

  def __init__(self, folder: str, meta: dict[str, Any]):
    self.folder, self.meta = folder, meta

  def path(self, name: str) -> str:
    return os.path.join(self.folder, name)

  def has(self, name: str) -> bool:
    return os.path.exists(self.path(name))

  def array(self, name: str, n: int) -> np.ndarray:
    """The array in file `name` (its dtype the file's extension), which must hold n items."""
    dtype = np.dtype(name.rsplit(".", 1)[1])
    try:
      size = os.path.getsize(self.path(name))
    except OSError as e:
      raise Damaged(f"{name}: {e.strerror}") from None
    if size != n * dtype.itemsize:
      raise Damaged(f"{name} holds {size} bytes, not {n * dtype.itemsize}")
    if n == 0:
      return np.empty(0, dtype)
    return np.memmap(self.path(name), dtype=dtype, mode="r", shape=(n,))

  def add(self, write: Callable[[Callable[[str], str]], None]) -> None:
    """Adds files to a whole entry: write(tmp) writes each file NAME to tmp(NAME), and
    they are renamed into place afterwards (last the one named first)."""
    tag = f".tmp-{os.getpid()}-{os.urandom(4).hex()}"
    names: list[str] = []

    def tmp(name: str) -> str:
      names.append(name)
      return self.path(name + tag)

    try:
      write(tmp)
      for name in reversed(names):
        os.replace(self.path(name + tag), self.path(name))
    finally:
      for name in names:
        _remove(self.path(name + tag))


def _remove(path: str) -> None:
  if os.path.isdir(path):
    shutil.rmtree(path, ignore_errors=True)
  else:
    try:
      os.remove(path)
    except OSError:
      pass


def load_or_build(path: str, kind: str, version: int, build: Callable[[Entry], dict[str, Any]],
                  load: Callable[[Entry], T]) -> T:
  """load(entry) of the entry of `kind` for the file at `path`: the whole entry of this
  version of the file if there is one that loads (load raises Damaged if not), else one
  built now by build(entry), which writes the entry's files (Entry.path) and returns its
  meta."""
  real = os.path.realpath(path)
  name = hashlib.sha1(real.encode("utf-8", "surrogateescape")).hexdigest()[:16]
  parent = os.path.join(root(), kind, f"{os.path.basename(real)[:80]}-{name}")
  stamp = Stamp.of(path)
  folder = os.path.join(parent, stamp.key())
  if os.path.isdir(folder):
    try:
      return load(_entry(folder, version, stamp))
    except Damaged as e:
      log.warning("the index of %s in %s does not load (%s): building it again", path, folder, e)
      _remove(folder)
  os.makedirs(parent, exist_ok=True)
  tmp = f"{folder}.tmp-{os.getpid()}-{os.urandom(4).hex()}"
  os.makedirs(tmp)
  try:
    meta = build(Entry(tmp, {}))
    meta.update(version=version, path=real, stamp=dataclasses.asdict(stamp))
    with open(os.path.join(tmp, "meta.json"), "w") as f:
      json.dump(meta, f)
    try:
      os.rename(tmp, folder)
    except OSError:  # another process renamed its own first: that one stays
      if not os.path.isdir(folder):
        raise
  finally:
    _remove(tmp)
  _remove_others(parent, stamp.key())
  return load(_entry(folder, version, stamp))


def _remove_others(parent: str, keep: str) -> None:
  """Removes the entries of earlier versions of a file, and the temporary folders of
  builds that ended a day ago or more without a rename (a killed process's)."""
  for other in os.listdir(parent):
    path = os.path.join(parent, other)
    try:
      stale = ".tmp-" not in other or time.time() - os.path.getmtime(path) > 86400
    except OSError:
      continue
    if other != keep and stale:
      _remove(path)


def _entry(folder: str, version: int, stamp: Stamp) -> Entry:
  try:
    with open(os.path.join(folder, "meta.json")) as f:
      meta = json.load(f)
  except (OSError, ValueError) as e:
    raise Damaged(f"meta.json: {e}") from None
  if not isinstance(meta, dict) or meta.get("version") != version:
    raise Damaged(f"meta.json is not of version {version}")
  if meta.get("stamp") != dataclasses.asdict(stamp):
    raise Damaged("meta.json is of another version of the file")
  return Entry(folder, meta)
