"""The entry points' allocator: mimalloc preloaded by re-exec, or a fallback that says why.
(The pretrain command's own log line is checked in test_train's CLI run.)"""

import os
import subprocess
import sys

import pytest

from nlm_jax import allocator

LINUX = sys.platform == "linux"


class Exec(Exception):
  """Raised by the fake os.execve: the test process must not be replaced."""


@pytest.fixture
def calls(monkeypatch):
  """os.execve recorded instead of run; a clean environment without LD_PRELOAD."""
  seen = []

  def fake(path, argv, env):
    seen.append((path, argv, env))
    raise Exec

  monkeypatch.setattr(allocator.os, "execve", fake)
  monkeypatch.delenv("LD_PRELOAD", raising=False)
  monkeypatch.delenv(allocator.ENV, raising=False)
  monkeypatch.setattr(allocator, "_reason", "")
  return seen


@pytest.mark.skipif(not LINUX, reason="mimalloc is preloaded on Linux only")
def test_reexecutes_the_same_command_with_mimalloc(calls, monkeypatch):
  monkeypatch.setattr(sys, "orig_argv", ["python", "-X", "utf8", "-m", "nlm_jax.pretrain", "a.fa"])
  monkeypatch.setenv("LD_PRELOAD", "libother.so")
  lib = allocator.library()
  assert lib and os.path.isfile(lib), "cmeel-mimalloc is a dependency on Linux: reinstall"
  with pytest.raises(Exec):
    allocator.preload()
  [(path, argv, env)] = calls
  assert path == sys.executable
  assert argv == [sys.executable, "-X", "utf8", "-m", "nlm_jax.pretrain", "a.fa"]
  assert env["LD_PRELOAD"] == f"{lib}:libother.so"


@pytest.mark.parametrize("env, library, reason", [
    ({allocator.ENV: "system"}, "lib.so", "NLM_JAX_ALLOCATOR=system"),
    ({}, None, "pip install cmeel-mimalloc"),
    ({"LD_PRELOAD": "/usr/lib/libtcmalloc.so.4"}, "lib.so", "LD_PRELOAD names an allocator"),
    ({"LD_PRELOAD": "lib.so"}, "lib.so", "did not preload lib.so"),
])
def test_falls_back_with_the_reason(calls, monkeypatch, env, library, reason):
  for k, v in env.items():
    monkeypatch.setenv(k, v)
  monkeypatch.setattr(allocator, "library", lambda: library)
  monkeypatch.setattr(allocator, "loaded", lambda: None)
  monkeypatch.setattr(allocator.sys, "platform", "linux")
  allocator.preload()
  assert not calls
  assert allocator.describe() == f"malloc: the system's ({allocator._reason})"
  assert reason in allocator._reason


def test_not_linux_falls_back(calls, monkeypatch):
  monkeypatch.setattr(allocator.sys, "platform", "darwin")
  allocator.preload()
  assert not calls and "Linux only, not darwin" in allocator._reason


def _python_m(module, env, *args):
  env = {**{k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "LD_PRELOAD")}, **env}
  return subprocess.run([sys.executable, "-m", module, *args], env=env, capture_output=True,
                        text=True, timeout=120)


def test_bad_value_is_one_line():
  out = _python_m("nlm_jax.pretrain", {allocator.ENV: "tcmalloc"})
  assert out.returncode == 2
  assert out.stderr.strip() == ("nlm_jax: error: NLM_JAX_ALLOCATOR='tcmalloc' is not an "
                                "allocator: use mimalloc or system (or unset it).")


@pytest.mark.skipif(not LINUX, reason="mimalloc is preloaded on Linux only")
def test_command_runs_with_mimalloc_and_its_errors_stay_one_line(tmp_path):
  """A child of the re-executed command inherits LD_PRELOAD: mimalloc is mapped in it.
  Bad input after the re-exec is still one line."""
  probe = ("import sys; from nlm_jax import allocator; allocator.preload(); "
           "print(allocator.describe())")
  out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                       timeout=60, env={k: v for k, v in os.environ.items() if k != "LD_PRELOAD"})
  assert out.returncode == 0 and out.stdout.strip() == "malloc: mimalloc", out.stderr
  out = _python_m("nlm_jax.pretrain", {}, "only_one.fa")
  assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
  assert out.stderr.startswith("nlm_jax.pretrain: error: expected two FASTA paths"), out.stderr
