"""Outputs written once, by one writer: OUT of embed and classify, OUT_DIR of export, and
(through Lock) a run's model folder.

A command checks OUT before it does any work (a new name, or with --overwrite one that
the command wrote; outside any model folder), and again when it writes (`writing`): then
under an exclusive lock on <OUT>.lock, so that of two commands writing the same OUT the
second stops in one line, naming the first, or finding OUT written. The output is written
under a temporary name beside it and renamed when whole. Whatever stops the command (an
error, SIGTERM or Ctrl-C, which cli turns into exceptions) removes the temporary file, the
lock, and the folders made for OUT; until it writes, nothing on disk changes.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import shutil
import socket
import tempfile
from typing import Callable, Iterator

from nlm_jax import errors
from nlm_jax.config import check_writable
from nlm_jax.errors import UserError

MODEL_FILES = ("nlm_jax.json", "config.json")  # what marks a folder that holds a model


class Lock:
  """An exclusive flock on `<path>.lock`, held until release() or the process ends. The
  OS drops it when the process dies, so a killed writer's lock file counts for nothing:
  the next writer takes it over.

  busy: the error when another process holds it ({holder}: which); unwritable: when the
  lock file cannot be made ({why})."""

  def __init__(self, path: str, busy: str, unwritable: str):
    self.file = f"{path}.lock"
    self.fd: int | None = None
    try:
      while True:
        fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
          fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
          holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
          os.close(fd)
          raise UserError(busy.format(holder=holder)) from None
        try:  # the holder before may have removed the file between our open and flock
          if os.stat(self.file).st_ino == os.fstat(fd).st_ino:
            break
        except FileNotFoundError:
          pass
        os.close(fd)
      self.fd = fd  # held: from here on release() removes it
      os.ftruncate(fd, 0)
      os.write(fd, f"process {os.getpid()} on {socket.gethostname()}".encode())
    except OSError as e:
      self.release()
      raise UserError(unwritable.format(why=e.strerror or e)) from None
    atexit.register(self.release)  # whatever ends the process, short of a kill

  def release(self) -> None:
    if self.fd is not None:
      with contextlib.suppress(OSError):
        os.unlink(self.file)
      os.close(self.fd)
      self.fd = None


@contextlib.contextmanager
def writing(path: str, check: Callable[[], None], what: str = "OUT", folder: bool = False,
            write_errors: tuple[type[BaseException], ...] = (OSError,)) -> Iterator[str]:
  """A temporary path beside `path` (OUT; a folder already made where `folder`) to write:
  renamed to OUT when the block ends, removed if it raises. `check` (which raises
  UserError for an OUT that may not be written) runs under OUT's lock first; `what` names
  OUT in messages. An exception of `write_errors` becomes one line naming the limit that
  was reached, or the fix."""
  made = _make_parents(path, what)
  tmp = None
  try:
    lock = Lock(path, f"{what} {path!r} is being written by {{holder}}: wait until that command "
                f"ends (or stop it), or choose another {what}.",
                f"cannot write {what} {path!r} ({{why}}): free disk space, fix the folder's "
                f"permissions, or choose another {what}.")
    try:
      check()
      parent = os.path.dirname(os.path.abspath(path))
      prefix = f".{os.path.basename(path)}.tmp-{os.getpid()}-"
      if folder:
        tmp = tempfile.mkdtemp(prefix=prefix, dir=parent)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp made it private
      else:
        tmp = os.path.join(parent, prefix + os.urandom(4).hex())
      yield tmp
      if folder:  # some writers make private files: the output gets what the umask gives
        for name in os.listdir(tmp):
          os.chmod(os.path.join(tmp, name), 0o666 & ~_umask())
      _publish(tmp, path)
    finally:
      lock.release()
  except BaseException as e:
    if tmp is not None:
      _remove(tmp)
    for made_folder in reversed(made):
      with contextlib.suppress(OSError):
        os.rmdir(made_folder)  # only while empty
    if isinstance(e, write_errors):
      raise errors.cannot_write(f"{what} {path!r}", e,
                                f"free disk space, or choose another {what}") from None
    raise


def _make_parents(path: str, what: str) -> list[str]:
  """Makes the missing folders above `path`; returns them, outermost first."""
  made, folder = [], os.path.dirname(os.path.abspath(path))
  while not os.path.isdir(folder):
    made.append(folder)
    folder = os.path.dirname(folder)
  made.reverse()
  for folder in made:
    try:
      os.mkdir(folder)
    except OSError as e:
      raise UserError(f"cannot create the folder {folder!r} of {what} {path!r} ({e.strerror}): "
                      f"choose another {what}.") from None
  return made


def _publish(tmp: str, path: str) -> None:
  """Renames the whole `tmp` to `path`; an earlier folder there goes only once the new
  one is in place."""
  if not os.path.isdir(tmp) or not os.path.lexists(path):
    os.replace(tmp, path)
    return
  old = tmp + ".old"
  os.rename(path, old)
  try:
    os.rename(tmp, path)
  except BaseException:
    os.rename(old, path)
    raise
  shutil.rmtree(old)


def _remove(path: str) -> None:
  if os.path.isdir(path):
    shutil.rmtree(path, ignore_errors=True)
  with contextlib.suppress(OSError):
    os.remove(path)


def _umask() -> int:
  umask = os.umask(0)
  os.umask(umask)
  return umask


def holder_of(path: str) -> str | None:
  """The nearest folder at or above `path` that holds a model (an nlm_jax run or export, or
  lncRNA-Py's model folder), or None: outputs written in there could be mistaken for part
  of it, or destroy it."""
  folder = os.path.abspath(path)
  while True:
    if _holds_model(folder):
      return folder
    parent = os.path.dirname(folder)
    if parent == folder:
      return None
    folder = parent


def _holds_model(folder: str) -> bool:
  if os.path.isfile(os.path.join(folder, MODEL_FILES[0])):
    return True
  try:  # any project may hold a config.json: only a model's counts
    with open(os.path.join(folder, MODEL_FILES[1]), "rb") as f:
      head = f.read(1 << 16)
  except OSError:
    return False
  return b'"encoding_method"' in head or b'"base_arch_config"' in head


def check_file(out: str, overwrite: bool, suffix: str, command: str,
               written_here: Callable[[str], bool]) -> None:
  """OUT of embed or classify: a new `suffix` file, or with --overwrite one that `command`
  wrote (`written_here`), outside any model or export folder."""
  if not out.endswith(suffix):
    raise UserError(f"OUT {out!r} must end in {suffix}.")
  if os.path.isdir(out):
    raise UserError(f"OUT {out!r} is a folder: pass a file name ending in {suffix}.")
  if os.path.lexists(out):
    if not overwrite:
      raise UserError(f"OUT {out!r} exists: choose another name or add --overwrite.")
    if os.path.islink(out) or not written_here(out):
      raise UserError(f"OUT {out!r} is no file that {command} wrote (--overwrite replaces only "
                      "those): choose another name.")
  folder = os.path.dirname(os.path.abspath(out))
  holder = holder_of(folder)
  if holder is not None:
    raise UserError(f"OUT {out!r} lies inside {holder!r}, which holds a model or an export: "
                    "write it elsewhere.")
  check_writable(folder, "output", "OUT")
