"""What the command-line entry points share: bad input ends in one line on stderr and
exit status 2, never a traceback."""

from __future__ import annotations

import atexit
import contextlib
import gc
import logging
import sys
import threading
import time
from typing import Callable, Iterator

from absl import app
from absl import flags
from absl import logging as absl_logging

from nlm_jax.errors import UserError


def exit_without_collecting() -> None:
  """At exit, Python's last garbage collections walk every object that JAX, flax and
  orbax made: 0.4 s of every command on 2 CPU cores (of 13 s for the README's e2e
  command). gc.freeze() as the last exit handler leaves them to the end of the process,
  which returns their memory anyway; the commands close their files and threads
  themselves. Call it first in an entry point's `__main__` block."""
  atexit.register(gc.freeze)


def fail(prog: str, message: str) -> None:
  print(f"{prog}: error: {message}", file=sys.stderr)
  sys.exit(2)


def flags_parser(prog: str) -> Callable[[list[str]], list[str]]:
  """absl's parser, with flag errors (unknown flag, bad value) as one line."""

  def parse(argv: list[str]) -> list[str]:
    try:
      return flags.FLAGS(argv)
    except flags.Error as e:
      fail(prog, f"{str(e).replace('ERROR:: ', '')} (see --helpfull for every flag).")

  return parse


def is_ours(record: logging.LogRecord) -> bool:
  """A record of nlm_jax's own loggers (`logging.getLogger(__name__)` in its modules).
  Judged by the logger's name, never by the file's path: in a clone named nlm_jax with
  the venv inside it, every library's path holds "nlm_jax" too."""
  return record.name == "nlm_jax" or record.name.startswith("nlm_jax.")


# How a full disk (or quota) reads in errno texts, tensorstore's and orbax's messages.
_DISK_FULL = ("No space left on device", "[Errno 28]", "os_error_code='28'",
              "Disk quota exceeded", "[Errno 122]")


def is_disk_full(text: str) -> bool:
  return any(s in text for s in _DISK_FULL)


def _says_disk_full(record: logging.LogRecord) -> bool:
  text = record.getMessage()
  if record.exc_info and record.exc_info[1] is not None:
    e: BaseException | None = record.exc_info[1]
    for _ in range(20):  # the chain: tensorstore's cause lies deep
      if e is None or is_disk_full(text):
        break
      text += f" {e}"
      e = e.__cause__ or e.__context__
  return is_disk_full(text)


def quiet_libraries(level: int = logging.WARNING) -> None:
  """Log lines from nlm_jax; from the libraries (orbax is chatty) only from `level` up, and
  none about a full disk: nlm_jax reports that in one line (orbax logged ~900 lines of
  asyncio tracebacks for one failed save)."""
  absl_logging.get_absl_handler().addFilter(
      lambda r: is_ours(r) or (r.levelno >= level and not _says_disk_full(r)))


def _quiet_threads() -> None:
  """Library threads that die of a full disk print no traceback (the main thread reports).
  Nor do the writes a failed save left running: orbax closes its event loop once one write
  fails, and each tensorstore write that ends later finds it closed ("Event loop is closed",
  through sys.unraisablehook, from tensorstore's threads)."""
  default, default_unraisable = threading.excepthook, sys.unraisablehook

  def hook(args):
    if not is_disk_full(f"{args.exc_type.__name__}: {args.exc_value}"):
      default(args)

  def unraisable_hook(args):
    text = f"{args.exc_type.__name__}: {args.exc_value}"
    if not (is_disk_full(text) or text == "RuntimeError: Event loop is closed"):
      default_unraisable(args)

  threading.excepthook, sys.unraisablehook = hook, unraisable_hook


def is_out_of_memory(e: BaseException) -> bool:
  text = f"{type(e).__name__}: {e}"
  return isinstance(e, MemoryError) or ("RESOURCE_EXHAUSTED" in text and "emory" in text)


@contextlib.contextmanager
def one_line_errors(prog: str, memory_flags: str = "--batch_size") -> Iterator[None]:
  """UserError as one line and exit status 2; running out of memory (host or device) or of
  disk space too: the first names `memory_flags`, the flags that lower what a step needs."""
  _quiet_threads()
  try:
    yield
  except UserError as e:
    fail(prog, str(e))
  except Exception as e:  # errors from below with a known cure; anything else is a bug
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    if is_out_of_memory(e):
      fail(prog, f"out of memory ({first}): lower {memory_flags}.")
    if is_disk_full(str(e)):
      fail(prog, f"no space left on the disk ({first}): free disk space, then run the same "
                 "command again.")
    raise


def run(main: Callable[[list[str]], None], prog: str,
        parser: Callable[[list[str]], list[str]] | None = None,
        memory_flags: str = "--batch_size") -> None:
  """app.run(main) with one_line_errors, library logs at ERROR."""

  def guarded(argv: list[str]) -> None:
    quiet_libraries(logging.ERROR)
    with one_line_errors(prog, memory_flags):
      main(argv)

  app.run(guarded, flags_parser=parser or flags_parser(prog))


class Progress:
  """A progress bar on stdout (a line every 10% when stdout is no terminal)."""

  def __init__(self, total_nt: int, total_records: int):
    self.total_nt, self.total_records = total_nt, total_records
    self.start = time.perf_counter()
    self.tty = sys.stdout.isatty()
    self.next_line = 0.1

  def update(self, nt: int, records: int) -> None:
    done = nt / max(self.total_nt, 1)
    if not self.tty and done < self.next_line and records < self.total_records:
      return
    self.next_line = done + 0.1
    elapsed = time.perf_counter() - self.start
    left = elapsed / done * (1 - done) if done > 0 else 0.0
    bar = "#" * int(30 * done) + "." * (30 - int(30 * done))
    line = (f"[{bar}] {records:,}/{self.total_records:,} records, "
            f"{nt / max(elapsed, 1e-9):.3g} nt/s, {elapsed:.0f} s elapsed, {left:.0f} s left")
    print(("\r" if self.tty else "") + line, end="" if self.tty else "\n", flush=True)

  def close(self) -> None:
    if self.tty:
      print()
