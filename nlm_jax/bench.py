r"""Throughput benchmark: train step, matmul peak, host sampler and FASTA streaming, side by side.

  .venv/bin/python -m nlm_jax.bench     # every configuration: about 9.5 min on 2 CPU cores
  .venv/bin/python -m nlm_jax.bench --configs=demo_conv --steps=20 --fasta_gb=0
  .venv/bin/python -m nlm_jax.bench --configs=e2e,e2e_system,e2e_one_device --fasta_gb=0   # the whole command

stdout holds one JSON line per training configuration, then one for FASTA streaming
(progress goes to stderr), so `... | tee bench.jsonl` keeps a machine-readable record.
All figures come from one process on one machine: compare lines of one run, not runs.

Configurations (--configs): demo_conv (launch/demo.flags), base_conv (the contract's
BERT-base defaults: d_model 768, N 12, n_kernels 768, kernel_size 10, context_length
768, batch_size 8; --remat dots, so that the step holds 5.2 GB rather than 12.5 GB of host
memory), base_kmer (k-mer k=3 at BERT-base, --remat dots), demo_kmer (k-mer k=3 at demo
size). Their samplers draw from the synthetic demo data (synthetic.write_demo).

Fields of a training line ("kind": "train"):
  config, encoding_method, d_model, N, context_length, batch_size, n_params: the model
    as measured; batch_size_requested: the configuration's batch, larger than batch_size
    when --fit_memory halved it to fit the host's memory (CPU only).
  devices: {count, platform, device_kind} of the one-axis data mesh.
  precision: the --precision asked for; remat: the --remat used; compute_dtype: the
    operand dtype of most dot_generals in the lowered train step (what the model really
    computes in).
  compile_s: seconds of train_step.lower(...).compile().
  step_memory_bytes: what one step holds (arguments, outputs, XLA temporaries), from
    compiled.memory_analysis().
  warmup_steps, timed_steps: steps run before timing, steps timed.
  step_s: median seconds of a timed step (each ended by jax.block_until_ready);
    step_s_all: every timed step.
  train_samples_per_s: batch_size / step_s; nucleotides_per_sample: the nucleotides of
    one row ((context_length-1)*kernel_size for conv, (context_length-1)*k for k-mers);
    train_nucleotides_per_s: their product.
  flops_per_step: FLOPs of one step from the compiled step's cost_analysis();
    flops_source says where it came from ("cost_analysis", or the model's count
    "6*params*tokens + 12*N*d_model*context*tokens" (PaLM's, attention included, no
    recomputation) when the analysis is missing or undercounts: it counts the scanned
    encoder's loop body once); flops_per_step_6nd: 6 * n_params * batch_size *
    context_length, for reference.
  achieved_flops_per_s: flops_per_step / step_s.
  peak_flops_per_s: best of 5 timings of a jitted chain of peak_matmul_iters
    peak_matmul_n x peak_matmul_n matmuls in peak_dtype (compute_dtype), measured right
    after this configuration's steps; mfu: achieved_flops_per_s / peak_flops_per_s.
  sampler_samples_per_s: rows per second of TrainSampler.batch in the main thread (one
    host core); sampler_vs_train: sampler_samples_per_s / train_samples_per_s, how many
    times faster one core samples than the step consumes.
  host_load_1m: the host's 1-minute load average when timing began: on a shared machine
    anything near or above the core count means the figures are contended.
  allocator: the malloc of the process ("malloc: mimalloc", see nlm_jax/allocator.py).
A configuration that does not fit even at the smallest batch prints
{"kind": "train", "config": ..., "error": ...} instead.

The whole pre-training command ("kind": "e2e"): `python -m nlm_jax.pretrain` run as a
subprocess, as a user runs it (it re-executes itself with its allocator), with a tiny conv
BERT (E2E_FLAGS: d_model 128, N 2, 128 kernels of 9, context 256, batch 8, 3 epochs of 400
samples, warm-up 100, seed 0) on GENCODE's 2,686 human lncRNAs (the shared data folder of
the project, when present: data "gencode") split 2,186 train / 500 valid, else on a
generated FASTA of the same size and length distribution ("generated"). Configuration e2e
runs it twice with mimalloc, in a new compilation cache ("cold") and again in the same
("warm"); e2e_system once with NLM_JAX_ALLOCATOR=system in a new cache; e2e_one_device
as e2e (cold, then warm) with --cpu_devices=1, the command before it split each batch over
one CPU device per core. Fields:
  data, n_train, n_valid, flags (the command's model flags), allocator (from its log),
  devices (the command's JAX devices, from its log),
  compilation_cache (cold or warm), compiled_from_cache (its log says the steps were
  loaded from the cache).
  wall_s; user_s, sys_s, minor_faults, max_rss_bytes: the child's resource usage
    (os.wait4), as /usr/bin/time reports them.
  The wall time's split: startup_s (from the start of the process to the first training
    step: imports, re-exec, compiling, the evaluation sets), train_s and eval_s (the
    epochs' training steps and evaluations, as the command logs them), other_s
    (checkpoints, history and plots between them), exit_s (from the last log line to the
    end of the process).
  train_real_nucleotides_per_s: the last epoch's nucleotides of real sequence per second
    of training (padding excluded); accuracy_valid: the last epoch's Accuracy|valid.

Fields of the FASTA line ("kind": "fasta_stream"), measured in a subprocess that imports
no JAX, opens a generated FASTA (--fasta_gb, sequences of 500-20,000 nt) with
nlm_jax.fasta.Fasta and draws TrainSampler batches at the default conv config for
--stream_s seconds:
  file_bytes, n_sequences, generate_s (0 when a file in --bench_dir was reused),
  index_s (opening and indexing), stream_s, batches, rows_per_s, distinct_sequences
  (sequences drawn), index_span (the share of the file between the first and last
  sequence drawn), max_rss_bytes (peak resident memory of the subprocess, from
  getrusage), rss_after_index_bytes (the peak right after indexing), rss_baseline_bytes
  (the peak before opening the file: the interpreter and its imports), jax_loaded.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import TYPE_CHECKING, Any

import numpy as np
from absl import app
from absl import flags

from nlm_jax import allocator
from nlm_jax import fasta as fasta_lib
from nlm_jax import sampler as sampler_lib
from nlm_jax.config import Config

# JAX (and nlm_jax.train, which imports it) is imported inside the measuring functions,
# so that the FASTA subprocess, which imports this module, holds no JAX in its memory.
if TYPE_CHECKING:
  import jax

DEMO = dict(encoding_method="conv", d_model=64, N=2, h=4, n_kernels=64, kernel_size=9,
            context_length=64, batch_size=16, n_samples_per_epoch=2000, warmup_steps=300,
            epochs=20, seed=0)
BASE = dict(encoding_method="conv", d_model=768, N=12, n_kernels=768, kernel_size=10,
            context_length=768, batch_size=8, remat="dots")
CONFIGS: dict[str, dict[str, Any]] = {
    "demo_conv": DEMO,
    "base_conv": BASE,
    "base_kmer": dict(BASE, encoding_method="kmer", k=3),
    "demo_kmer": dict(DEMO, encoding_method="kmer", k=3),
}
# (warm-up steps, timed steps) when --warmup / --steps are not given: a BERT-base step
# takes many seconds on CPU.
# The whole pre-training command, run as a user runs it (issue 11): a tiny conv BERT for
# 3 epochs of 400 samples on GENCODE's lncRNAs split 2,186 / 500.
E2E_FLAGS = ("--d_model=128", "--N=2", "--n_kernels=128", "--kernel_size=9",
             "--context_length=256", "--batch_size=8", "--epochs=3", "--n_samples_per_epoch=400",
             "--warmup_steps=100", "--seed=0")
E2E_SPLIT = (2186, 500)
E2E_CONFIGS = ("e2e", "e2e_system", "e2e_one_device")
# The GENCODE lncRNAs of the shared data folder next to a checkout, when present.
GENCODE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data",
                       "gencode_human_lncrna.fasta")
_FINISHED_RE = re.compile(r"training finished in ([\d.]+) s \(training ([\d.]+) s, evaluation "
                          r"([\d.]+) s")
_REAL_NT_RE = re.compile(r"([\d.e+]+) real nt/s")
_ALLOCATOR_RE = re.compile(r"(malloc: [^;]+);")
_ACCURACY_RE = re.compile(r"Accuracy\|valid ([\d.]+)")
_DEVICES_RE = re.compile(r"(\d+) devices \((\w+)\)")
DEFAULT_STEPS = {"demo_conv": (3, 20), "base_conv": (1, 2), "base_kmer": (1, 2),
                 "demo_kmer": (3, 20)}

_CONFIGS = flags.DEFINE_list("configs", [*CONFIGS, *E2E_CONFIGS],
                             f"Configurations to run, of {', '.join([*CONFIGS, *E2E_CONFIGS])}.")
_STEPS = flags.DEFINE_integer("steps", None, "Timed steps per configuration (default: 20 at demo "
                              "size, 2 at BERT-base).", lower_bound=1)
_WARMUP = flags.DEFINE_integer("warmup", None, "Untimed steps before timing (default: 3 at demo "
                               "size, 1 at BERT-base).", lower_bound=0)
_PRECISION = flags.DEFINE_enum("precision", "auto", ["auto", "fp32", "bf16"],
                               "The --precision of every configuration.")
_FASTA_GB = flags.DEFINE_float("fasta_gb", 1.0, "Size of the generated FASTA streamed for the "
                               "memory figure, in GB (1e9 bytes); 0 skips it.", lower_bound=0.0)
_STREAM_S = flags.DEFINE_float("stream_s", 10.0, "Seconds of batch drawing from that FASTA.",
                               lower_bound=0.1)
_SAMPLER_S = flags.DEFINE_float("sampler_s", 1.5, "Seconds of TrainSampler.batch timing per "
                                "configuration.", lower_bound=0.05)
_PEAK_N = flags.DEFINE_integer("peak_n", None, "Matmul size of the peak measurement (default: "
                               "1024 on CPU, 8192 on accelerators).", lower_bound=128)
_FIT_MEMORY = flags.DEFINE_boolean(
    "fit_memory", True, "On CPU, halve a configuration's batch while its compiled step needs "
    "more than 85% of the available host memory (batch_size then differs from "
    "batch_size_requested).")
_REMAT = flags.DEFINE_enum("remat", None, ["none", "block", "dots"], "The --remat of every "
                           "configuration (default: dots at BERT-base, none at demo size).")
_BENCH_DIR = flags.DEFINE_string("bench_dir", None, "Folder for the demo data and the generated "
                                 "FASTA, kept (and the FASTA reused) between runs; default: a "
                                 "temporary folder, deleted at the end.")

_E2E_FLAGS = flags.DEFINE_list("e2e_flags", [], "Pre-training flags added to the e2e command "
                               "(they override its own), e.g. --e2e_flags=--epochs=1.")

_DTYPE_NAMES = {"f32": "float32", "bf16": "bfloat16", "f16": "float16", "f64": "float64"}
# An element type in StableHLO text, e.g. the f32 of tensor<8x768xf32>.
_DOT_RE = re.compile(r"dot_general.*?:\s*\(tensor<(?:[0-9?]+x)*([a-z]+[0-9]*)>")


def log(msg: str) -> None:
  """Progress for people: stderr, flushed."""
  print(f"[bench] {msg}", file=sys.stderr, flush=True)


def emit(record: dict[str, Any]) -> None:
  """One JSON line on stdout."""
  print(json.dumps(record), flush=True)


# ----------------------------------------------------------------------------- FASTA


def write_random_fasta(path: str, n_bytes: int, seed: int = 0, min_len: int = 500,
                       max_len: int = 20_000, line: int = 60) -> int:
  """A FASTA of at least n_bytes: uniform random ACGT sequences of min_len..max_len nt,
  wrapped at `line`. Written to path.tmp then renamed; returns the sequence count."""
  rng = np.random.default_rng(seed)
  letters = np.frombuffer(b"ACGT", dtype=np.uint8)
  chunk_N = 1 << 26
  pool_N = np.empty(0, dtype=np.uint8)
  used, written, i = 0, 0, 0
  tmp = path + ".tmp"
  with open(tmp, "wb", buffering=1 << 24) as f:
    while written < n_bytes:
      length = int(rng.integers(min_len, max_len + 1))
      if used + length > len(pool_N):  # random letters, drawn 64 MiB at a time
        pool_N = letters[np.frombuffer(rng.bytes(chunk_N), dtype=np.uint8) & 3]
        used = 0
      seq_N = pool_N[used:used + length]
      used += length
      n_full = length // line
      rows_RxW = np.empty((n_full, line + 1), dtype=np.uint8)
      rows_RxW[:, :line] = seq_N[:n_full * line].reshape(n_full, line)
      rows_RxW[:, line] = ord("\n")
      header = f">rnd_{i} len={length}\n".encode()
      tail = seq_N[n_full * line:].tobytes() + (b"\n" if length % line else b"")
      f.write(header)
      f.write(rows_RxW.tobytes())
      f.write(tail)
      written += len(header) + rows_RxW.size + len(tail)
      i += 1
  os.replace(tmp, path)
  return i


def max_rss_bytes() -> int:
  """This process's peak resident memory (ru_maxrss: KiB on Linux, bytes on macOS)."""
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return rss if sys.platform == "darwin" else rss * 1024


def stream_fasta(path: str, seconds: float) -> dict[str, Any]:
  """Opens `path` and draws TrainSampler batches at the default conv config for `seconds`;
  run in a fresh process (see fasta_stream_record) so that ru_maxrss is this work's peak."""
  rss_baseline = max_rss_bytes()
  t0 = time.perf_counter()
  fa = fasta_lib.Fasta(path)
  index_s = time.perf_counter() - t0
  rss_after_index = max_rss_bytes()
  cfg = Config(path, path).validate()  # the contract's defaults: conv, 768 positions, batch 8
  sampler = sampler_lib.TrainSampler(fa, cfg, sampler_lib.encoding_for(cfg))
  seen_B = np.zeros(len(fa), dtype=bool)
  n_batches, rows = 0, 0
  t0 = time.perf_counter()
  while time.perf_counter() - t0 < seconds:
    epoch, step = divmod(n_batches, sampler.steps_per_epoch)
    seen_B[sampler.indices(epoch, step)] = True
    rows += len(sampler.batch(epoch, step)["inputs"])
    n_batches += 1
  elapsed = time.perf_counter() - t0
  drawn = np.flatnonzero(seen_B)
  return {"file_bytes": os.path.getsize(path), "n_sequences": len(fa), "index_s": index_s,
          "stream_s": elapsed, "batches": n_batches, "rows_per_s": rows / elapsed,
          "distinct_sequences": int(len(drawn)),
          "index_span": float((drawn[-1] - drawn[0] + 1) / len(fa)),
          "max_rss_bytes": max_rss_bytes(), "rss_after_index_bytes": rss_after_index,
          "rss_baseline_bytes": rss_baseline, "jax_loaded": "jax" in sys.modules}


# Linux keeps a process's peak RSS across fork and exec: a child of the JAX process starts
# with JAX's peak in its ru_maxrss. The child therefore forks once more; the grandchild,
# forked from a fresh interpreter, starts from that interpreter's few MB and does the work.
_CHILD = """
import json, os, sys, traceback
from nlm_jax import bench
pid = os.fork()
if pid == 0:
  code = 0
  try:
    print(json.dumps(bench.stream_fasta(sys.argv[1], float(sys.argv[2]))), flush=True)
  except BaseException:
    traceback.print_exc()
    code = 1
  sys.stderr.flush()
  os._exit(code)
sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


def fasta_stream_record(folder: str, gb: float, seconds: float) -> dict[str, Any]:
  """Generates (or reuses) the FASTA in `folder`, measures streaming in a subprocess."""
  path = os.path.join(folder, f"stream_{gb:g}GB.fasta")
  generate_s = 0.0
  if not os.path.exists(path):
    log(f"writing a {gb:g} GB random FASTA to {path}")
    t0 = time.perf_counter()
    n = write_random_fasta(path, int(gb * 1e9))
    generate_s = time.perf_counter() - t0
    log(f"  {n:,} sequences in {generate_s:.1f} s")
  log(f"streaming it for {seconds:g} s in a subprocess")
  out = subprocess.run([sys.executable, "-c", _CHILD, path, str(seconds)], capture_output=True,
                       text=True, check=False)
  if out.returncode:
    raise RuntimeError(f"the FASTA streaming subprocess failed:\n{out.stderr[-3000:]}")
  child = json.loads(out.stdout.strip().splitlines()[-1])
  return {"kind": "fasta_stream", "config": "default_conv", "generate_s": generate_s, **child}


# ----------------------------------------------------------------------------- training


def compute_dtype(hlo_text: str) -> str:
  """The first-operand dtype of most dot_generals in StableHLO text ('unknown' if none)."""
  found = _DOT_RE.findall(hlo_text)
  if not found:
    return "unknown"
  top = max(set(found), key=found.count)
  return _DTYPE_NAMES.get(top, top)


def sampler_rate(sampler: sampler_lib.TrainSampler, seconds: float) -> float:
  """Rows per second of sampler.batch in this thread, over about `seconds`."""
  sampler.batch(0, 0)  # the epoch's permutation
  n_batches, rows = 0, 0
  t0 = time.perf_counter()
  while time.perf_counter() - t0 < seconds:
    epoch, step = divmod(n_batches, sampler.steps_per_epoch)
    rows += len(sampler.batch(epoch, step)["inputs"])
    n_batches += 1
  return rows / (time.perf_counter() - t0)


def nucleotides_per_sample(cfg: Config) -> int:
  return (cfg.context_length - 1) * cfg.token_k if cfg.is_token else cfg.n_nucleotides


def step_memory_bytes(compiled: Any) -> int | None:
  """Bytes one call of the compiled step holds at its peak: arguments, outputs not aliased
  to them, and temporaries (compiled.memory_analysis()); None where unavailable."""
  try:
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
               + m.temp_size_in_bytes)
  except Exception:  # not implemented on some backends
    return None


def available_host_bytes() -> int | None:
  """MemAvailable of /proc/meminfo (Linux), else None."""
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def compile_fitting(cfg: Config, mesh: Any) -> tuple[Config, Any, Any, Any, float]:
  """Initialises the state and compiles the train step of `cfg`; on CPU with --fit_memory,
  halves the batch while the step's outputs and temporaries would need more than 85% of
  the host's available memory (XLA's CPU temporaries can exceed it, and then the kernel
  kills the process). Returns (the config used, state, lowered, compiled, compile seconds)."""
  import jax

  from nlm_jax import train

  n_devices = int(mesh.devices.size)
  on_cpu = mesh.devices.flat[0].platform == "cpu"
  while True:
    encoding = sampler_lib.encoding_for(cfg)
    sampler = sampler_lib.TrainSampler(fasta_lib.Fasta(cfg.train_path), cfg, encoding)
    batch = train.to_device(sampler.batch(0, 0), mesh)
    # The state first: its optimizer and apply_fn are part of the compiled step's signature.
    state = train.init_state(cfg, mesh, jax.random.key(cfg.seed))
    t0 = time.perf_counter()
    lowered = train.make_train_step(cfg, mesh).lower(
        state, batch, jax.random.key(1))
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    need, available = step_memory_bytes(compiled), available_host_bytes()
    if need and available:  # the arguments (state and batch) are allocated already
      need -= compiled.memory_analysis().argument_size_in_bytes
    if not (on_cpu and _FIT_MEMORY.value and need and available) or need < 0.85 * available:
      return cfg, state, lowered, compiled, compile_s
    del state
    message = (f"the step needs {need / 1e9:.1f} GB more at batch {cfg.batch_size}, "
               f"{available / 1e9:.1f} GB are available")
    half = cfg.batch_size // 2
    if half < n_devices or half % n_devices:
      raise MemoryError(message)
    log(f"  {message}: halving the batch (--nofit_memory: don't)")
    cfg = dataclasses.replace(cfg, batch_size=half)


def train_record(name: str, cfg: Config, warmup: int, steps: int) -> dict[str, Any]:
  """Compiles, warms up and times the train step of `cfg`, then measures the matmul peak
  (right after, so that a shared host's load weighs on both alike) and the sampler."""
  import jax

  from nlm_jax import flops as flops_lib
  from nlm_jax import model as model_lib
  from nlm_jax import train

  mesh = train.make_mesh()
  devices = mesh.devices.flat
  platform = devices[0].platform
  key = jax.random.key(1)
  requested_batch = cfg.batch_size
  cfg, state, lowered, compiled, compile_s = compile_fitting(cfg, mesh)
  dtype = compute_dtype(lowered.as_text())
  memory = step_memory_bytes(compiled)
  sampler = sampler_lib.TrainSampler(fasta_lib.Fasta(cfg.train_path), cfg,
                                     sampler_lib.encoding_for(cfg))
  n_params = int(sum(x.size for x in jax.tree.leaves(state.params)))
  log(f"  {n_params:,} parameters, compute dtype {dtype}, compiled in {compile_s:.1f} s"
      + (f", {memory / 1e9:.2f} GB per step" if memory else ""))
  batches = [train.to_device(sampler.batch(0, i), mesh) for i in range(warmup + steps)]
  jax.block_until_ready(batches)

  load_1m = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
  times = []
  for i, batch in enumerate(batches):
    t0 = time.perf_counter()
    state, metrics = compiled(state, batch, key)
    jax.block_until_ready((state, metrics))
    if i >= warmup:
      times.append(time.perf_counter() - t0)
    log(f"  step {i + 1}/{len(batches)}{' (warm-up)' if i < warmup else ''}: "
        f"{time.perf_counter() - t0:.3f} s")
  del state, batches
  step_s = statistics.median(times)

  tokens = cfg.batch_size * cfg.context_length
  flops_6nd = 6.0 * n_params * tokens
  flops_model = model_lib.train_flops(cfg, n_params, cfg.batch_size)
  model_source = "6*params*tokens + 12*N*d_model*context*tokens"
  flops, source = flops_lib.cost_flops(compiled), "cost_analysis"
  if flops is None:
    flops, source = flops_model, f"{model_source} (no cost_analysis)"
  elif flops < 0.5 * flops_6nd:
    flops, source = flops_model, f"{model_source} (cost_analysis undercounts)"

  peak_dtype = dtype if dtype in ("float32", "bfloat16", "float16") else "float32"
  peak_n = _PEAK_N.value or (1024 if platform == "cpu" else 8192)
  log(f"  measuring the {peak_n}x{peak_n} {peak_dtype} matmul peak")
  peak, peak_iters = flops_lib.peak_flops(peak_dtype, peak_n, devices[0])
  log(f"  {peak / 1e9:.1f} GFLOP/s peak, {flops / step_s / 1e9:.1f} GFLOP/s achieved")

  log(f"  timing the sampler for {_SAMPLER_S.value:g} s")
  sampler_per_s = sampler_rate(sampler, _SAMPLER_S.value)
  train_per_s = cfg.batch_size / step_s
  nucs = nucleotides_per_sample(cfg)
  achieved = flops / step_s
  return {
      "kind": "train", "config": name, "encoding_method": cfg.encoding_method,
      "d_model": cfg.d_model, "N": cfg.N, "context_length": cfg.context_length,
      "batch_size": cfg.batch_size, "batch_size_requested": requested_batch, "n_params": n_params,
      "devices": {"count": int(mesh.devices.size), "platform": platform,
                  "device_kind": devices[0].device_kind},
      "precision": cfg.precision, "remat": cfg.remat, "compute_dtype": dtype, "compile_s": compile_s,
      "step_memory_bytes": memory,
      "warmup_steps": warmup, "timed_steps": steps, "step_s": step_s, "step_s_all": times,
      "train_samples_per_s": train_per_s, "nucleotides_per_sample": nucs,
      "train_nucleotides_per_s": train_per_s * nucs,
      "flops_per_step": flops, "flops_source": source, "flops_per_step_6nd": flops_6nd,
      "achieved_flops_per_s": achieved, "peak_flops_per_s": peak,
      "peak_matmul_n": peak_n, "peak_matmul_iters": peak_iters, "peak_dtype": peak_dtype,
      "mfu": achieved / peak, "host_load_1m": load_1m, "allocator": allocator.describe(),
      "sampler_samples_per_s": sampler_per_s, "sampler_vs_train": sampler_per_s / train_per_s,
  }


# ----------------------------------------------------------------------------- the whole command


def e2e_data(folder: str) -> tuple[str, str, str]:
  """(train, valid, source): GENCODE's lncRNAs of ../shared/data split 2,186 / 500 (the first
  2,186 records train) where that file is present, else a generated FASTA of the same
  size and length distribution."""
  train, valid = (os.path.join(folder, f"e2e_{s}.fasta") for s in ("train", "valid"))
  source = "generated"
  if os.path.exists(GENCODE):
    records = list(fasta_lib.records(GENCODE))
    source = "gencode"
  else:  # lengths: log-normal through GENCODE's median (993) and quartiles (602, 1,741)
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(np.log(993), 0.787, E2E_SPLIT[0] + E2E_SPLIT[1]), 152, 15364)
    records = [(f"rnd_{i}", "".join(rng.choice(list("ACGT"), int(n), p=[0.28, 0.23, 0.23, 0.26])))
               for i, n in enumerate(lengths)]
  for path, part in ((train, records[:E2E_SPLIT[0]]), (valid, records[E2E_SPLIT[0]:])):
    with open(path, "w") as f:
      f.writelines(f">{name}\n{seq}\n" for name, seq in part)
  return train, valid, source


def child_env(allocator_choice: str) -> dict[str, str]:
  """The environment of a pretrain subprocess as a user's shell would give it: without this
  bench's own LD_PRELOAD of mimalloc (so the command re-executes itself as usual) or XLA_FLAGS."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  lib = allocator.library()
  kept = [p for p in re.split(r"[: ]", env.pop("LD_PRELOAD", "")) if p and p != lib]
  if kept:
    env["LD_PRELOAD"] = ":".join(kept)
  env[allocator.ENV] = allocator_choice
  return env


def e2e_record(name: str, folder: str, train: str, valid: str, source: str, cache: str,
               cache_state: str, allocator_choice: str, extra: tuple[str, ...] = ()
               ) -> dict[str, Any]:
  """Runs the pre-training command in a subprocess; wall, user and system seconds, faults and
  peak memory of the child (os.wait4), and the split of its wall time from its log."""
  run_dir = os.path.join(folder, f"run_{name}_{cache_state}")
  shutil.rmtree(run_dir, ignore_errors=True)
  cmd = [sys.executable, "-m", "nlm_jax.pretrain", train, valid, *E2E_FLAGS, *extra, *_E2E_FLAGS.value,
         f"--model_dir={run_dir}/models", f"--results_dir={run_dir}/results",
         f"--compilation_cache={cache}"]
  load_1m = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
  t0 = time.perf_counter()
  proc = subprocess.Popen(cmd, env=child_env(allocator_choice), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  lines, finished_at = [], None
  for line in proc.stderr:
    lines.append(line)
    if "training finished in" in line:
      finished_at = time.perf_counter()
  _, status, usage = os.wait4(proc.pid, 0)
  wall = time.perf_counter() - t0
  proc.returncode = os.waitstatus_to_exitcode(status)
  log_text = "".join(lines)
  done = _FINISHED_RE.search(log_text)
  if proc.returncode or not done or finished_at is None:
    raise RuntimeError(f"the pre-training command failed ({proc.returncode}):\n{log_text[-3000:]}")
  loop_s, train_s, eval_s = (float(x) for x in done.group(1, 2, 3))
  real = [float(x) for x in _REAL_NT_RE.findall(log_text)]
  rss = usage.ru_maxrss if sys.platform == "darwin" else usage.ru_maxrss * 1024
  return {
      "kind": "e2e", "config": name, "data": source, "n_train": E2E_SPLIT[0],
      "n_valid": E2E_SPLIT[1], "flags": " ".join([*E2E_FLAGS, *extra, *_E2E_FLAGS.value]),
      "allocator": _ALLOCATOR_RE.search(log_text).group(1),
      "devices": "{} {}".format(*_DEVICES_RE.search(log_text).groups()),
      "compilation_cache": cache_state,
      "compiled_from_cache": "(from the compilation cache)" in log_text,
      "wall_s": wall, "user_s": usage.ru_utime, "sys_s": usage.ru_stime,
      "minor_faults": usage.ru_minflt, "max_rss_bytes": rss,
      "startup_s": finished_at - t0 - loop_s, "train_s": train_s, "eval_s": eval_s,
      "other_s": round(loop_s - train_s - eval_s, 3), "exit_s": wall - (finished_at - t0),
      "train_real_nucleotides_per_s": real[-1] if real else None,
      "accuracy_valid": float(_ACCURACY_RE.findall(log_text)[-1]), "host_load_1m": load_1m,
  }


def e2e_records(folder: str, configs: list[str]) -> None:
  """Emits the e2e lines: with mimalloc in a cold then a warm compilation cache, and with the
  system's malloc (cold), each in a fresh model folder."""
  train, valid, source = e2e_data(folder)
  log(f"the whole pre-training command on {source} data ({E2E_SPLIT[0]:,} / {E2E_SPLIT[1]:,}), "
      f"{' '.join([*E2E_FLAGS, *_E2E_FLAGS.value])}")
  runs = []
  if "e2e" in configs:
    runs += [("e2e", "cache_mimalloc", "cold", "mimalloc", ()),
             ("e2e", "cache_mimalloc", "warm", "mimalloc", ())]
  if "e2e_system" in configs:
    runs.append(("e2e_system", "cache_system", "cold", "system", ()))
  if "e2e_one_device" in configs:
    runs += [("e2e_one_device", "cache_one_device", "cold", "mimalloc", ("--cpu_devices=1",)),
             ("e2e_one_device", "cache_one_device", "warm", "mimalloc", ("--cpu_devices=1",))]
  for name, cache_name, cache_state, choice, extra in runs:
    cache = os.path.join(folder, cache_name)
    if cache_state == "cold":
      shutil.rmtree(cache, ignore_errors=True)
    log(f"{name}: {choice} malloc, {cache_state} compilation cache {' '.join(extra)}")
    record = e2e_record(name, folder, train, valid, source, cache, cache_state, choice, extra)
    log(f"  {record['devices']}: {record['wall_s']:.1f} s wall (start-up {record['startup_s']:.1f}, training "
        f"{record['train_s']:.1f}, evaluation {record['eval_s']:.1f}), user {record['user_s']:.1f} s, "
        f"sys {record['sys_s']:.1f} s, {record['minor_faults'] / 1e6:.2f} M minor faults, "
        f"Accuracy|valid {record['accuracy_valid']:.4f}")
    emit(record)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  unknown = [c for c in _CONFIGS.value if c not in CONFIGS and c not in E2E_CONFIGS]
  if unknown:
    raise app.UsageError(f"unknown --configs {', '.join(unknown)}: choose from "
                         f"{', '.join([*CONFIGS, *E2E_CONFIGS])}")
  # A terminated bench still removes its temporary folder (and a 1 GB FASTA in it).
  signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
  own_dir = _BENCH_DIR.value is None
  folder = tempfile.mkdtemp(prefix="nlm_bench_") if own_dir else _BENCH_DIR.value
  os.makedirs(folder, exist_ok=True)
  start = time.perf_counter()
  try:
    if any(c in CONFIGS for c in _CONFIGS.value):
      demo = os.path.join(folder, "demo")
      train_fa, valid_fa = (os.path.join(demo, f) for f in ("train.fasta", "valid.fasta"))
      if not os.path.exists(train_fa):
        from nlm_jax import synthetic  # here: its flags are not the bench's

        log(f"writing the demo data to {demo}")
        synthetic.write_demo(demo, 3000, 500)
      for name in (c for c in _CONFIGS.value if c in CONFIGS):
        warmup, steps = DEFAULT_STEPS[name]
        warmup = warmup if _WARMUP.value is None else _WARMUP.value
        steps = steps if _STEPS.value is None else _STEPS.value
        kw = dict(CONFIGS[name], **({"remat": _REMAT.value} if _REMAT.value else {}))
        cfg = Config(train_fa, valid_fa, precision=_PRECISION.value, **kw).validate()
        log(f"{name}: {cfg.encoding_method}, d_model {cfg.d_model}, N {cfg.N}, context "
            f"{cfg.context_length}, batch {cfg.batch_size}; {warmup} warm-up + {steps} timed steps")
        try:
          emit(train_record(name, cfg, warmup, steps))
        except MemoryError as e:
          log(f"  skipped: {e}")
          emit({"kind": "train", "config": name, "error": f"skipped: {e}"})
    if any(c in E2E_CONFIGS for c in _CONFIGS.value):
      e2e_records(folder, _CONFIGS.value)
    if _FASTA_GB.value > 0:
      emit(fasta_stream_record(folder, _FASTA_GB.value, _STREAM_S.value))
  finally:
    if own_dir:
      shutil.rmtree(folder, ignore_errors=True)
  log(f"done in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
  allocator.preload()  # re-executes this command with mimalloc, before JAX loads
  app.run(main)
