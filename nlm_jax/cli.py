"""What the command-line entry points share: bad input ends in one line on stderr and
exit status 2, never a traceback. Here, once for every command: flagfiles, the process's
resource limits, signals, and the start of JAX in the environment it is given."""

from __future__ import annotations

import atexit
import contextlib
import gc
import importlib
import logging
import os
import re
import resource
import signal
import sys
import threading
import time
from typing import Callable, Iterator, Mapping, Sequence

from absl import app
from absl import flags
from absl import logging as absl_logging

from nlm_jax import errors
from nlm_jax.errors import UserError


def exit_without_collecting() -> None:
  """At exit, Python's last garbage collections walk every object that JAX, flax and
  orbax made: 0.4 s of every command on 2 CPU cores (of 13 s for the README's e2e
  command). gc.freeze() as the last exit handler leaves them to the end of the process,
  which returns their memory anyway; the commands close their files and threads
  themselves. Call it first in an entry point's `__main__` block."""
  atexit.register(gc.freeze)


def fail(prog: str, message: str) -> None:
  """The one line, and the end: what a library's threads and coroutines still raise while
  the process exits (orbax's other reads of a damaged checkpoint) is not printed after it."""
  print(f"{prog}: error: {message}", file=sys.stderr)
  sys.unraisablehook = threading.excepthook = lambda _: None
  sys.exit(2)


def flags_parser(prog: str, groups: Mapping[str, Sequence[str]] | None = None
                 ) -> Callable[[list[str]], list[str]]:
  """absl's parser, with flag errors (unknown flag, bad value, a flagfile that is no
  UTF-8 text) as one line, and --help (-h, --helpfull) as `help_text(prog, groups)` on
  stdout with exit status 0."""

  def parse(argv: list[str]) -> list[str]:
    if any(arg in HELP_ARGS for arg in argv[1:argv.index("--") if "--" in argv else None]):
      print_help(prog, groups)
    try:
      check_flagfiles(argv)
      return flags.FLAGS(argv)
    except UserError as e:
      fail(prog, str(e))
    except flags.Error as e:
      fail(prog, f"{str(e).replace('ERROR:: ', '')} (see --help for every flag).")

  return parse


HELP_ARGS = ("-h", "-?", "-help", "--help", "-helpshort", "--helpshort", "-helpfull", "--helpfull")
OWN = "nlm_jax's own"  # the help's group of the flags that lncRNA-Py's scripts lack


def print_help(prog: str, groups: Mapping[str, Sequence[str]] | None = None) -> None:
  """Prints the help and exits with status 0 (also when a pager such as `head` closed the
  pipe early)."""
  try:
    print(help_text(prog, groups), flush=True)
  except BrokenPipeError:
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
  sys.exit(0)


def help_text(prog: str, groups: Mapping[str, Sequence[str]] | None = None,
              fv: flags.FlagValues = flags.FLAGS) -> str:
  """The command's help: its module docstring, then its flags in `groups` (heading -> flag
  names, in lncRNA-Py's order: data, architecture, training), the rest under OWN. Each
  flag as it is typed (a boolean `--no_input_relu` as itself, never `--[no]no_input_relu`)
  with its default. Only the command's own flags (defined by nlm_jax's modules): absl's
  (logging, --helpxml) and those of the libraries it imports are left out, and no file
  path of this machine is printed."""
  import textwrap

  ours = {f.name: f for module, fs in fv.flags_by_module_dict().items()
          if module.startswith("nlm_jax") or module in ("__main__", sys.argv[0]) for f in fs}
  doc = (sys.modules["__main__"].__doc__ or "").strip() if "__main__" in sys.modules else ""
  lines = [doc, ""] if doc else [f"python -m {prog} [flags]", ""]
  listed: set[str] = set()
  sections = [(heading, [n for n in names if n in ours]) for heading, names in (groups or {}).items()]
  sections.append((OWN if groups else "flags", sorted(set(ours) - {n for _, ns in sections for n in ns},
                                                   key=str.lower)))
  for heading, names in sections:
    names = [n for n in names if n not in listed]
    if not names:
      continue
    listed.update(names)
    lines.append(f"{heading}:")
    for name in names:
      f = ours[name]
      values = getattr(f.parser, "enum_values", None)
      text = (f.help or "").removeprefix(f"<{'|'.join(values)}>: " if values else "")
      lines.append(f"  {_typed(f)}")
      lines.extend(textwrap.wrap(text, 88, initial_indent=" " * 6, subsequent_indent=" " * 6))
    lines.append("")
  lines += textwrap.wrap("--flagfile=FILE reads flags from FILE, one a line (a line starting "
                         "with # is a comment); flags after it override it. --help (or -h, --helpfull, "
                         "--helpshort) prints this text.", 88)
  return "\n".join(lines)


def _typed(f: flags.Flag) -> str:
  """A flag as it is typed, with its default."""
  if f.boolean:
    if f.default is None:
      return f"--[no]{f.name}  (default: unset)"
    if f.default:
      return f"--no{f.name}  (default: --{f.name})"
    return f"--{f.name}  (default: off)"
  values = getattr(f.parser, "enum_values", None)
  value = "|".join(values) if values else f.name.upper()
  if f.default is None:
    default = "unset"
  else:
    default = ",".join(map(str, f.default)) if isinstance(f.default, list) else str(f.default)
  return f"--{f.name}={value}  (default: {default or repr('')})"


_FLAGFILE = re.compile(r"--?flagfile(?:=(.*))?$")


def check_flagfiles(argv: list[str], seen: tuple[str, ...] = ()) -> None:
  """Reads the flagfiles that `argv` names (and those they name) as bytes: one that is no
  UTF-8 text is a UserError naming it and its first undecodable line (absl would fail
  with a UnicodeDecodeError). Files absl cannot open are left to absl's own error."""
  for i, arg in enumerate(argv):
    match = _FLAGFILE.match(arg)
    if not match:
      continue
    name = match.group(1) if match.group(1) is not None else (argv[i + 1] if i + 1 < len(argv) else "")
    path = os.path.expanduser(name.strip())
    if not path or path in seen:
      continue
    try:
      with open(path, "rb") as f:
        data = f.read()
    except OSError:
      continue
    try:
      text = data.decode("utf-8")
    except UnicodeDecodeError as e:
      line = data.count(b"\n", 0, e.start) + 1
      raise UserError(f"flagfile {name!r} is no UTF-8 text (byte 0x{data[e.start]:02x} on line "
                      f"{line}): save it as UTF-8.") from None
    check_flagfiles([l.strip() for l in text.splitlines() if l.startswith("-")], seen + (path,))


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


class Interrupted(BaseException):
  """SIGTERM arrived: raised in the main thread, as Ctrl-C raises KeyboardInterrupt, so that
  every `finally` runs (temporary files are removed, locks released) before the command
  ends in one line."""

  def __init__(self, signum: int):
    super().__init__(signal.Signals(signum).name)
    self.status = 128 + signum


def _raise_interrupted(signum: int, _) -> None:
  raise Interrupted(signum)


# Below this many open files JAX's threads, orbax's checkpoints and the FASTA index do not
# all fit (the catalogue's tiny run needed 48 on 2 cores; more cores, more threads).
MIN_OPEN_FILES = 256


def check_limits() -> None:
  """The process's resource limits, before a command starts: a soft limit of open files
  below MIN_OPEN_FILES is raised towards the hard one (as any process may; the Go runtime
  does the same), a hard one below it is refused; and a write past the file-size limit
  (ulimit -f) fails with EFBIG, which one_line_errors names, instead of killing the
  process (SIGXFSZ)."""
  soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
  if soft != resource.RLIM_INFINITY and soft < MIN_OPEN_FILES and soft != hard:
    want = 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)
    with contextlib.suppress(ValueError, OSError):
      resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
  files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
  if files != resource.RLIM_INFINITY and files < MIN_OPEN_FILES:
    raise UserError(f"this process may open only {files} files (ulimit -n {files}); JAX, orbax "
                    f"and the FASTA index need at least {MIN_OPEN_FILES}: raise the limit "
                    "(ulimit -n 4096), then run the same command again.")
  if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


@contextlib.contextmanager
def one_line_errors(prog: str, memory_flags: str | None = None) -> Iterator[None]:
  """UserError as one line and exit status 2; running out of memory (host or device), of
  disk space or into a resource limit too: the first names `memory_flags`, the command's
  flags that lower what a step needs, if it has any. SIGTERM and Ctrl-C end the command in
  one line as well, after its `finally` blocks (status 143 and 130)."""
  _quiet_threads()
  main = threading.current_thread() is threading.main_thread()
  previous = signal.signal(signal.SIGTERM, _raise_interrupted) if main else None
  try:
    check_limits()
    yield
  except UserError as e:
    fail(prog, str(e))
  except (KeyboardInterrupt, Interrupted) as e:
    status = e.status if isinstance(e, Interrupted) else 130
    how = f"stopped by {e}" if isinstance(e, Interrupted) else "interrupted (Ctrl-C)"
    print(f"{prog}: {how}: its output was not written (nothing half-written is left); run "
          "the same command again.", file=sys.stderr)
    sys.exit(status)
  except Exception as e:  # errors from below with a known cure; anything else is a bug
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    if is_out_of_memory(e):
      cure = f"lower {memory_flags}" if memory_flags else "free memory, or use a larger machine"
      fail(prog, f"out of memory ({first}): {cure}.")
    limit = errors.limit_reached(_chain_text(e))
    if limit:
      fail(prog, f"{limit} ({first}).")
    if is_disk_full(str(e)):
      fail(prog, f"no space left on the disk ({first}): free disk space, then run the same "
                 "command again.")
    raise
  finally:
    if main:
      signal.signal(signal.SIGTERM, previous)


def _chain_text(e: BaseException) -> str:
  """The texts of an exception and of those that caused it (a library's cause lies deep)."""
  texts = []
  for _ in range(20):
    if e is None:
      break
    texts.append(f"{type(e).__name__}: {e}")
    e = e.__cause__ or e.__context__
  return " ".join(texts)


def import_jax() -> None:
  """Imports JAX: a variable of its environment that it refuses (JAX_ENABLE_X64=maybe) or
  a broken XLA_FLAGS device count becomes one UserError naming the variable."""
  count = re.search(r"xla_force_host_platform_device_count=(\S*)", os.environ.get("XLA_FLAGS", ""))
  if count and not (count.group(1).isdigit() and int(count.group(1)) >= 1):
    raise UserError(f"XLA_FLAGS sets xla_force_host_platform_device_count={count.group(1)}: it "
                    "takes a whole number of CPU devices, at least 1; fix or remove it.")
  with _jax_environment():
    importlib.import_module("jax")


def start_jax() -> None:
  """Starts JAX's backends (after import_jax and whatever must be configured before
  them): a platform that JAX_PLATFORMS asks for and this machine lacks, or a backend that
  cannot start, becomes one UserError naming the variable and the fix."""
  import_jax()
  import jax

  with _jax_environment():
    jax.devices()


@contextlib.contextmanager
def _jax_environment() -> Iterator[None]:
  try:
    yield
  except UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except: JAX raises several types here
    raise UserError(_jax_problem(e)) from None


def _jax_problem(e: Exception) -> str:
  """What the failed start of JAX says, named by the variable that caused it."""
  first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
  flag = re.search(r"for JAX flag (jax_\w+)", first) or re.search(r"environment '(JAX_\w+)'", first)
  if flag:
    name = flag.group(1).upper()
    return (f"JAX refuses {name}={os.environ.get(name, '')!r} ({first}): fix or unset the "
            "variable, then run the same command again.")
  platforms = os.environ.get("JAX_PLATFORMS", "")
  if platforms:
    return (f"JAX cannot start JAX_PLATFORMS={platforms!r} on this machine ({first}): unset "
            "JAX_PLATFORMS to use the devices it has, or install JAX's build for that platform "
            "(see docs/gpus-and-tpus.md).")
  for name in ("JAX_NUM_CPU_DEVICES", "XLA_FLAGS"):
    if os.environ.get(name):
      return (f"JAX cannot start its backend with {name}={os.environ[name]!r} ({first}): fix "
              f"or unset {name}, then run the same command again.")
  return (f"JAX cannot start its backend ({first}): check the JAX installation (pip install "
          "-r requirements.txt, from the repository root).")


def run(main: Callable[[list[str]], None], prog: str,
        parser: Callable[[list[str]], list[str]] | None = None,
        memory_flags: str | None = None, groups: Mapping[str, Sequence[str]] | None = None) -> None:
  """app.run(main) with one_line_errors, library logs at ERROR; --help groups the flags."""

  def guarded(argv: list[str]) -> None:
    quiet_libraries(logging.ERROR)
    with one_line_errors(prog, memory_flags):
      main(argv)

  app.run(guarded, flags_parser=parser or flags_parser(prog, groups))


class Progress:
  """A progress bar on stdout (a line every 10% when stdout is no terminal)."""

  def __init__(self, total_nt: int, total_records: int):
    self.total_nt, self.total_records = total_nt, total_records
    self.start = time.perf_counter()
    self.tty = sys.stdout.isatty()
    self.next_line = 0.1
    self.shown = -1  # records of the last line: a file gets each line once

  def update(self, nt: int, records: int) -> None:
    done = nt / max(self.total_nt, 1)
    if not self.tty and (records == self.shown
                         or (done < self.next_line and records < self.total_records)):
      return
    self.next_line, self.shown = done + 0.1, records
    elapsed = time.perf_counter() - self.start
    left = elapsed / done * (1 - done) if done > 0 else 0.0
    bar = "#" * int(30 * done) + "." * (30 - int(30 * done))
    line = (f"[{bar}] {records:,}/{self.total_records:,} records, "
            f"{nt / max(elapsed, 1e-9):.3g} nt/s, {elapsed:.0f} s elapsed, {left:.0f} s left")
    print(("\r" if self.tty else "") + line, end="" if self.tty else "\n", flush=True)

  def close(self) -> None:
    if self.tty:
      print()
