"""The memory allocator of the command-line entry points: mimalloc, preloaded by re-exec.

XLA's CPU buffers come from malloc. glibc's malloc hands large freed blocks back to the
kernel at once, and the next step faults them in again: on 2 CPU cores a third of a small
pre-training run's wall time went into page faults (16 M minor faults, system time half
the user time). mimalloc keeps freed memory for reuse. It ships as the pip package
cmeel-mimalloc, a dependency on Linux, so every install has it without apt-get.

malloc cannot be replaced once a process runs, so `preload()`, called first by an entry
point's `__main__` block, re-executes the same command line (same process id, same
arguments) with the library in LD_PRELOAD, before JAX is imported. Nothing else changes:
`nlm_jax.load` in a notebook and library calls never re-execute anything.

NLM_JAX_ALLOCATOR=system turns it off. Where mimalloc cannot apply (not Linux, the package
missing, LD_PRELOAD naming another allocator already, exec failing) the command runs on
with what it has; `describe()` says which and why, for the run's log line.
"""

from __future__ import annotations

import os
import sys

ENV = "NLM_JAX_ALLOCATOR"
CHOICES = ("mimalloc", "system")
_OTHERS = ("tcmalloc", "jemalloc", "mimalloc")  # allocators a user may preload themselves

_reason = ""  # why preload() left the allocator as it was, for describe()


def library() -> str | None:
  """The path of libmimalloc.so from the cmeel-mimalloc package, None without it. (A look
  along sys.path: importlib.metadata would cost more start-up than the rest of preload.)"""
  for folder in sys.path:
    path = os.path.join(folder or ".", "cmeel.prefix", "lib", "libmimalloc.so")
    if os.path.isfile(path):
      return os.path.realpath(path)
  return None


def loaded() -> str | None:
  """The allocator library mapped into this process (mimalloc, tcmalloc, jemalloc), or None."""
  try:
    with open("/proc/self/maps") as f:
      maps = f.read()
  except OSError:
    return None
  return next((name for name in _OTHERS if f"lib{name}" in maps), None)


def preload() -> None:
  """Re-executes this command with mimalloc preloaded; returns only where it does not apply.
  Call it first in `if __name__ == "__main__":`, before anything imports JAX."""
  global _reason
  choice = os.environ.get(ENV, "mimalloc")
  if choice not in CHOICES:
    print(f"nlm_jax: error: {ENV}={choice!r} is not an allocator: use {' or '.join(CHOICES)} "
          f"(or unset it).", file=sys.stderr)
    sys.exit(2)
  preloaded = os.environ.get("LD_PRELOAD", "")
  lib = library()
  if choice == "system":
    _reason = f"{ENV}=system"
  elif sys.platform != "linux":
    _reason = f"mimalloc is preloaded on Linux only, not {sys.platform}"
  elif lib is None:
    _reason = "the package cmeel-mimalloc is not installed (pip install cmeel-mimalloc)"
  elif lib in preloaded:
    if loaded() != "mimalloc":
      _reason = f"the dynamic loader did not preload {lib}"
  elif any(name in preloaded for name in _OTHERS):
    _reason = "LD_PRELOAD names an allocator already"
  elif not sys.executable or not getattr(sys, "orig_argv", None):
    _reason = "the command line is unknown"
  else:
    env = dict(os.environ, LD_PRELOAD=f"{lib}:{preloaded}" if preloaded else lib)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
      os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    except OSError as e:
      _reason = f"re-executing the command failed ({e.strerror})"


def describe() -> str:
  """What this process allocates with, for the log: e.g. "malloc: mimalloc"."""
  name = loaded()
  if name:
    return f"malloc: {name}"
  return f"malloc: the system's ({_reason})" if _reason else "malloc: the system's"
