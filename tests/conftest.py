"""Test set-up: 8 fake CPU devices (set before JAX starts), one compilation cache, generated
FASTA files, and the commands run from a server that has imported JAX."""

import atexit
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile

# The commands the tests run share one compilation cache, never the user's (~/.cache).
os.environ["NLM_JAX_COMPILATION_CACHE"] = tempfile.mkdtemp(prefix="nlm_jax_test_xla_cache_")
atexit.register(shutil.rmtree, os.environ["NLM_JAX_COMPILATION_CACHE"], ignore_errors=True)
# And one FASTA index folder (nlm_jax/filecache.py), never the user's.
os.environ["NLM_JAX_FASTA_INDEX"] = tempfile.mkdtemp(prefix="nlm_jax_test_fasta_index_")
atexit.register(shutil.rmtree, os.environ["NLM_JAX_FASTA_INDEX"], ignore_errors=True)
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()

import jax
import numpy as np
import pytest

# The tests in this process use that cache too: many compile the same tiny programs (a
# random model's embedding, a config's train step), a third of their time before.
jax.config.update("jax_compilation_cache_dir", os.environ["NLM_JAX_COMPILATION_CACHE"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared")


class CommandServer:
  """The client of command_server.py: runs `python -m MODULE ARGS` in a process forked
  from one that has imported JAX already (see there), started on first use."""

  def __init__(self):
    self.proc = None

  @staticmethod
  def available() -> bool:
    from nlm_jax import allocator

    return sys.platform == "linux" and allocator.library() is not None

  def _start(self):
    from nlm_jax import allocator

    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "LD_PRELOAD")}
    env.update(LD_PRELOAD=allocator.library(), PYTHONUNBUFFERED="1")
    self.log = tempfile.TemporaryFile()
    self.proc = subprocess.Popen(
        [sys.executable, os.path.join(os.path.dirname(__file__), "command_server.py")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, env=env, bufsize=0)
    self.buffer = b""
    atexit.register(self.close)

  def _message(self, timeout):
    selector = selectors.DefaultSelector()
    selector.register(self.proc.stdout, selectors.EVENT_READ)
    while b"\n" not in self.buffer:
      if not selector.select(timeout):
        raise TimeoutError
      chunk = os.read(self.proc.stdout.fileno(), 4096)
      if not chunk:
        self.log.seek(0)
        raise RuntimeError("the command server ended: " + self.log.read().decode()[-3000:])
      self.buffer += chunk
    line, self.buffer = self.buffer.split(b"\n", 1)
    return json.loads(line)

  def run(self, module, args, cwd, env, timeout, limits=None):
    """subprocess.run([python, -m, module, *args], cwd, env, capture_output, text, timeout),
    under resource `limits` ({"RLIMIT_...": (soft, hard)}) where given."""
    if self.proc is None or self.proc.poll() is not None:
      self._start()
    with tempfile.TemporaryDirectory(prefix="nlm_jax_command_") as tmp:
      out, err = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
      self.proc.stdin.write((json.dumps({"module": module, "args": list(args), "cwd": str(cwd),
                                         "env": env, "out": out, "err": err,
                                         "limits": limits or {}}) + "\n").encode())
      pid = self._message(60)["pid"]
      try:
        status = self._message(timeout)["status"]
      except TimeoutError:
        os.kill(pid, signal.SIGKILL)
        self._message(60)
        raise subprocess.TimeoutExpired([module, *args], timeout) from None
      with open(out, errors="replace") as f_out, open(err, errors="replace") as f_err:
        return subprocess.CompletedProcess([sys.executable, "-m", module, *args], status,
                                           f_out.read(), f_err.read())

  def close(self):
    if self.proc is not None and self.proc.poll() is None:
      self.proc.stdin.close()
      self.proc.wait(timeout=60)


COMMANDS = CommandServer()


def run_command(module, cwd, *args, timeout=300, env=None, fresh=False, limits=None):
  """`python -m module args` in cwd, its output captured; `env` adds to (or overrides) the
  environment, without conftest's XLA_FLAGS (8 fake devices are for in-process tests);
  `limits` ({"RLIMIT_...": (soft, hard)}) are set as `ulimit` would, before it starts.
  Unless `fresh`, the process is forked from the command server: the same command, without
  Python's start and JAX's import. So is one whose `env` sets XLA_FLAGS alone (read when
  the child first asks JAX for its devices; the server never did); other variables may be
  read by the imports, so their commands run afresh."""
  full_env = dict(os.environ)
  full_env.pop("XLA_FLAGS", None)
  full_env["PYTHONUNBUFFERED"] = "1"
  full_env.update(env or {})
  if fresh or set(env or {}) - {"XLA_FLAGS"} or not COMMANDS.available():
    import resource

    def set_limits():
      for name, value in (limits or {}).items():
        resource.setrlimit(getattr(resource, name), value)

    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, errors="replace", timeout=timeout,
                          preexec_fn=set_limits)
  return COMMANDS.run(module, args, cwd, full_env, timeout, limits)


def signal_while_writing(module, cwd, sig, *args):
  """Runs `python -m module args` in cwd, waits until its output's temporary file appears
  and sends `sig`; returns (exit status, stderr). The command starts as from a terminal:
  a shell without job control starts background jobs (a CI script run with &) with Ctrl-C
  ignored, and children inherit that."""
  import time

  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  before = signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  finally:
    signal.signal(signal.SIGINT, before)
  deadline = time.monotonic() + 120
  while not any(".tmp-" in n for n in os.listdir(cwd)):
    assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
    time.sleep(0.01)
  proc.send_signal(sig)
  _, err = proc.communicate(timeout=60)
  return proc.returncode, err


def write_fasta(path, seqs, prefix="seq", newline="\n", width=None):
  """Writes records `prefix_i`; `width` wraps sequence lines, `newline` ends every line."""
  with open(path, "w", newline="") as f:
    for i, s in enumerate(seqs):
      f.write(f">{prefix}_{i}{newline}")
      step = width or max(len(s), 1)
      for j in range(0, len(s), step):
        f.write(s[j:j + step] + newline)
  return str(path)


def random_seqs(n, min_len, max_len, seed=0):
  rng = np.random.default_rng(seed)
  return ["".join(rng.choice(list("ACGT"), rng.integers(min_len, max_len + 1))) for _ in range(n)]


def shared_path(*parts):
  """A file of ../shared/data, or a skip when ../shared is absent."""
  path = os.path.join(SHARED, *parts)
  if not os.path.exists(path):
    pytest.skip(f"{path} is absent")
  return path


def numpy_logits(t, c, x, attend_partial_window=False):
  """MLM logits in NumPy from lncRNA-Py's tensors `t` and constructor arguments `c` (what
  nlm_jax.export writes), written from the formulas of original-behaviour.md 7.1-7.3:
  the reference that the model and the train step are checked against. Conv keys are
  CLS and int(count_nonzero(src.sum(axis=1)) / kernel_size) windows (CSEBERT.forward),
  or every window holding a nucleotide with `attend_partial_window`."""
  import math

  from nlm_jax import encodings, model as model_lib

  a = c["base_arch_config"]
  d, h = a["d_model"], a["h"]
  b = len(x)

  def lin(v, name):
    return v @ t[name + ".weight"].T + t[name + ".bias"]

  def norm(v, name):
    mu, var = v.mean(-1, keepdims=True), v.var(-1, keepdims=True)
    return (v - mu) / np.sqrt(var + 1e-5) * t[name + ".weight"] + t[name + ".bias"]

  if a["type"] == "BERT":
    v = t["base_arch.embedder.weight"][x]
    keys = (x != encodings.PAD).sum(1)
    pe = t["base_arch.pos_encoder.pe"][0]
  else:
    stem = "base_arch.conv_seq_embedder."
    w = t[stem + "conv_seq_encoder.cse_layers.0.weight"]  # (n_kernels, 4, ks)
    ks = w.shape[2]
    p = x.shape[1] // ks
    onehot = model_lib.ONE_HOT[x[:, :p * ks]].reshape(b, p, ks, 4)
    v = np.einsum("bpjc,kcj->bpk", onehot, w) + t[stem + "conv_seq_encoder.cse_layers.0.bias"]
    if a["input_relu"]:
      v = np.maximum(v, 0)
    if a["input_linear"]:
      v = lin(v, stem + "linear")
    v = np.concatenate([np.broadcast_to(t[stem + "cls_token"], (b, 1, d)), v], axis=1)
    nonzero = (model_lib.ONE_HOT[x].sum(-1) != 0).sum(1)  # 4D-DNA columns that are not 0
    keys = 1 + (-(-nonzero // ks) if attend_partial_window else nonzero // ks)
    pe = t["base_arch.positional_encoder.pe"][0]
  n = v.shape[1]
  v = v * math.sqrt(d) + pe[:n]
  key_ok = np.arange(n)[None, None, None, :] < keys[:, None, None, None]
  for i in range(a["N"]):
    layer = f"base_arch.encoder.layers.{i}."
    u = norm(v, layer + "1.norm")
    q, k, val = (lin(u, layer + f"0.linears.{j}").reshape(b, n, h, d // h) for j in range(3))
    s = np.einsum("bqhe,bkhe->bhqk", q, k) / math.sqrt(d // h)
    s = np.where(key_ok, s, -np.inf)
    s = np.exp(s - s.max(-1, keepdims=True))
    s /= s.sum(-1, keepdims=True)
    v = v + lin(np.einsum("bhqk,bkhe->bqhe", s, val).reshape(b, n, d), layer + "0.linears.3")
    u = norm(v, layer + "3.norm")
    v = v + lin(np.maximum(lin(u, layer + "2.lin_1"), 0), layer + "2.lin_2")
  v = norm(v, "base_arch.encoder.norm")
  if a["type"] == "BERT":
    return lin(v, "mlm_layer")
  v = v[:, 1:]
  if c["output_linear"]:
    v = lin(v, "linear")
  if c["output_relu"]:
    v = np.maximum(v, 0)
  layer = f"transposed_conv_layers.{1 if c['output_relu'] else 0}"
  w = t[layer + ".weight"]  # (C, 4, ks)
  out = np.einsum("bpc,coj->bpjo", v, w).reshape(b, -1, 4)
  return out + t[layer + ".bias"]


def peer_paths():
  """(python, checkout): lncRNA-Py and a Python with torch as ../shared/tools/peer_setup.sh
  makes them ($PEER_HOME, else nlm_jax_peer in the user's cache folder), or a skip."""
  home = os.environ.get("PEER_HOME") or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "nlm_jax_peer")
  python = os.path.join(home, "peer", "bin", "python")
  checkout = os.path.join(home, "peer", "src", "lncRNA-Py")
  if not (os.access(python, os.X_OK)
          and os.path.isfile(os.path.join(checkout, "lncrnapy", "modules", "bert.py"))):
    pytest.skip(f"lncRNA-Py and a Python with torch are absent from {home}/peer")
  return python, checkout
