r"""Throughput benchmark: train step, matmul peak, host sampler and FASTA streaming, side by side.

  .venv/bin/python -m nlm_jax.bench     # every configuration
  .venv/bin/python -m nlm_jax.bench --configs=demo_conv --steps=20
  .venv/bin/python -m nlm_jax.bench --configs=e2e,e2e_system,e2e_one_device   # the whole command
  .venv/bin/python -m nlm_jax.bench --configs=fasta --fasta_gb=4   # a 4 GB FASTA file
  .venv/bin/python -m nlm_jax.bench --lncrnapy=../lncRNA-Py --lncrnapy_python=PY   # beside lncRNA-Py

stdout holds one JSON line per configuration (progress goes to stderr), so `... | tee bench.jsonl` keeps a machine-readable record.
All figures come from one process on one machine: compare lines of one run, not runs.

Configurations (--configs): demo_conv (launch/demo.flags), base_conv (the contract's
BERT-base defaults: d_model 768, N 12, n_kernels 768, kernel_size 10, context_length
768, batch_size 8; --remat dots, so that the step holds 5.2 GB rather than 12.5 GB of host
memory), base_kmer (k-mer k=3 at BERT-base, --remat dots), demo_kmer (k-mer k=3 at demo
size). Their samplers draw from the synthetic demo data (synthetic.write_demo).
gencode_conv and gencode_conv_packed: the paper's context (768 positions of kernel 9) with
a small model (d_model 64, N 2, batch 8) on GENCODE's lncRNAs (the e2e command's training
file, see below), without and with --packing; with both, a line "kind": "packing" compares
them (real_fraction of each, and the packed line's real nucleotides/s, sequences/s and
step time over the unpacked one's).

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
    step_s_all: every timed step; step_s_pipelined: seconds a step of the same batches
    run again as the training loop runs them (the next dispatched while one runs, at most
    two in flight, one wait at the end): below step_s by what the host's dispatch adds to
    a step timed alone.
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
  mfu: achieved_flops_per_s / peak_flops_per_s, MFU as the field states it: against the
    chip's dense peak in peak_dtype (compute_dtype) from the vendor's page (flops.CHIPS:
    H100, H200, A100, L4, TPU v4, v5e, v5p, v6e), or against the measured rate below
    where the device kind is not in that table; peak_source says which.
  measured_peak_flops_per_s: best of 5 timings of a jitted chain of peak_matmul_iters
    peak_matmul_n x peak_matmul_n matmuls in peak_dtype, measured right after this
    configuration's steps; mfu_of_measured_peak: achieved_flops_per_s over it.
  sampler_samples_per_s: sequences per second of TrainSampler.batch in the main thread
    (one host core); sampler_vs_train: how many times faster one core samples sequences
    than the step consumes them.
  packing: --packing; real_fraction: the share of the timed batches' nucleotide positions
    that hold real nucleotides (padding and a window's unused part excluded);
    real_nucleotides_per_s, sequences_per_s: of the timed steps; mfu_real: mfu times
    real_fraction, the MFU of real work.
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

The dropout's random bits ("kind": "dropout", configuration dropout, only when named): the
train step of BERT-base conv at kernel 9 and context 768 (on CPU with N 2 and batch 8, on an
accelerator N 12 and batch 64) with its dropout keys drawn by each of JAX's PRNG
implementations (threefry2x32, which training uses, rbg and unsafe_rbg: XLA's
RngBitGenerator) and with the encoder's dropout off, side by side in one run:
  step_s and mfu of each (keys "threefry2x32", "rbg", "unsafe_rbg", "no_dropout"),
  vs_threefry: each step time over threefry's.

One epoch at the defaults ("kind": "epoch", configuration epoch): the pre-training command
with the e2e command's model and otherwise lncRNA-Py's defaults (10,000 samples an epoch,
evaluation on 2,500 training and 2,500 validation rows) for one epoch on the synthetic demo
data (3,000 training and 2,500 validation sequences), and how its wall time splits:
  flags, steps, epoch_s (the training loop), train_s (the training steps), eval_s,
  checkpoint_s (dispatching the asynchronous save), report_s (history.csv, plots,
  TensorBoard, the log line), outside_steps_share (1 - train_s / epoch_s, as the epoch's
  log line gives it), eval_rows (rows of an evaluation batch), run_s (the training loop
  with the wait for the last save to be written at the end of the run).

lncRNA-Py side by side ("kind": "peer", configuration peer, the default's first when
--lncrnapy is given): its own pre-training step and nlm_jax's at the same configuration in
one run, one line per batch size (bench_peer.py says every field).

The FASTA line ("kind": "fasta", configuration fasta): opening a large FASTA file the
first time and later, beside pyfastx's index build, sampling from it and the pre-training
command on it (bench_fasta.py says every field).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np
from absl import app
from absl import flags

from nlm_jax import allocator
from nlm_jax import fasta as fasta_lib
from nlm_jax import sampler as sampler_lib
from nlm_jax.config import Config

# JAX (and nlm_jax.train, which imports it) is imported inside the measuring functions:
# --help, the e2e command's runs and the FASTA measurements go without it.

DEMO = dict(encoding_method="conv", d_model=64, N=2, h=4, n_kernels=64, kernel_size=9,
            context_length=64, batch_size=16, n_samples_per_epoch=2000, warmup_steps=300,
            epochs=20, seed=0)
BASE = dict(encoding_method="conv", d_model=768, N=12, n_kernels=768, kernel_size=10,
            context_length=768, batch_size=8, remat="dots")
# The paper's context on GENCODE's lncRNAs (a small model on CPU), without and with packing.
GENCODE_CONV = dict(encoding_method="conv", d_model=64, N=2, h=4, n_kernels=64, kernel_size=9,
                    context_length=768, batch_size=8)
CONFIGS: dict[str, dict[str, Any]] = {
    "demo_conv": DEMO,
    "base_conv": BASE,
    "base_kmer": dict(BASE, encoding_method="kmer", k=3),
    "demo_kmer": dict(DEMO, encoding_method="kmer", k=3),
    "gencode_conv": GENCODE_CONV,
    "gencode_conv_packed": dict(GENCODE_CONV, packing=True),
}
# (warm-up steps, timed steps) when --warmup / --steps are not given: a BERT-base step
# takes many seconds on CPU.
# The whole pre-training command, run as a user runs it (issue 11): a tiny conv BERT for
# 3 epochs of 400 samples on GENCODE's lncRNAs split 2,186 / 500.
E2E_FLAGS = ("--d_model=128", "--N=2", "--n_kernels=128", "--kernel_size=9",
             "--context_length=256", "--batch_size=8", "--epochs=3", "--n_samples_per_epoch=400",
             "--warmup_steps=100", "--seed=0")
E2E_SPLIT = (2186, 500)
E2E_CONFIGS = ("e2e", "e2e_system", "e2e_one_device", "epoch")
# One epoch at lncRNA-Py's defaults of sampling and evaluation, the e2e command's model.
EPOCH_FLAGS = ("--d_model=128", "--N=2", "--n_kernels=128", "--kernel_size=9",
               "--context_length=256", "--batch_size=8", "--epochs=1", "--seed=0")
EPOCH_DATA = (3000, 2500)
FASTA_CONFIGS = ("fasta",)
ALL_CONFIGS = ("peer", *CONFIGS, "dropout", *E2E_CONFIGS, *FASTA_CONFIGS)
PRNGS = ("threefry2x32", "rbg", "unsafe_rbg")
# The GENCODE lncRNAs of the shared data folder next to a checkout, when present.
GENCODE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data",
                       "gencode_human_lncrna.fasta")
_FINISHED_RE = re.compile(r"training finished in ([\d.]+) s \(training ([\d.]+) s, evaluation "
                          r"([\d.]+) s")
_SPLIT_RE = re.compile(r"evaluation ([\d.]+) s, checkpoints ([\d.]+) s, reports ([\d.]+) s")
_OUTSIDE_RE = re.compile(r"([\d.]+)% of the epoch outside steps")
_STEPS_RE = re.compile(r"; (\d+) steps per epoch")
_EVAL_ROWS_RE = re.compile(r"evaluation batches of (\d+) rows")
_REAL_NT_RE = re.compile(r"([\d.e+]+) real nt/s")
_ALLOCATOR_RE = re.compile(r"(malloc: [^;]+);")
_ACCURACY_RE = re.compile(r"Accuracy\|valid ([\d.]+)")
_DEVICES_RE = re.compile(r"(\d+) devices \((\w+)\)")
DEFAULT_STEPS = {"demo_conv": (3, 20), "base_conv": (1, 2), "base_kmer": (1, 2),
                 "demo_kmer": (3, 20), "gencode_conv": (2, 10), "gencode_conv_packed": (2, 10)}

_CONFIGS = flags.DEFINE_list("configs", [c for c in ALL_CONFIGS if c not in ("peer", "dropout")],
                             f"Configurations to run, of {', '.join(ALL_CONFIGS)} (default: all "
                             "but dropout; peer only with --lncrnapy).")
_LNCRNAPY = flags.DEFINE_string("lncrnapy", None, "lncRNA-Py's checkout (the folder that holds "
                                "lncrnapy/): configuration peer times its pre-training step beside "
                                "nlm_jax's.")
_LNCRNAPY_PYTHON = flags.DEFINE_string("lncrnapy_python", sys.executable, "The Python that has "
                                       "PyTorch (and lncRNA-Py's requirements) for --lncrnapy.")
_STEPS = flags.DEFINE_integer("steps", None, "Timed steps per configuration (default: 20 at demo "
                              "size, 2 at BERT-base).", lower_bound=1)
_WARMUP = flags.DEFINE_integer("warmup", None, "Untimed steps before timing (default: 3 at demo "
                               "size, 1 at BERT-base).", lower_bound=0)
_PRECISION = flags.DEFINE_enum("precision", "auto", ["auto", "fp32", "bf16"],
                               "The --precision of every configuration.")
_FASTA_GB = flags.DEFINE_float("fasta_gb", 1.0, "Size of the generated FASTA of configuration "
                               "fasta, in GB (1e9 bytes); 0 skips that configuration.",
                               lower_bound=0.0)
_FASTA_GZIP_GB = flags.DEFINE_float("fasta_gzip_gb", 1.0, "Of that file, the GB that configuration "
                                    "fasta gzips and measures too; 0: none.", lower_bound=0.0)
_STREAM_S = flags.DEFINE_float("stream_s", 10.0, "Seconds of batch drawing from each FASTA file "
                               "of configuration fasta.", lower_bound=0.1)
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


# ----------------------------------------------------------------------------- training


def compute_dtype(hlo_text: str) -> str:
  """The first-operand dtype of most dot_generals in StableHLO text ('unknown' if none)."""
  found = _DOT_RE.findall(hlo_text)
  if not found:
    return "unknown"
  top = max(set(found), key=found.count)
  return _DTYPE_NAMES.get(top, top)


def sampler_rate(sampler: sampler_lib.TrainSampler, seconds: float) -> float:
  """Sequences per second of sampler.batch in this thread, over about `seconds`."""
  sampler.batch(0, 0)  # the epoch's permutation (and packing plan)
  epoch, step, sequences = 0, 0, 0
  t0 = time.perf_counter()
  while time.perf_counter() - t0 < seconds:
    if step == sampler.steps_in(epoch):
      epoch, step = epoch + 1, 0
    sequences += sampler.encoding.n_sequences(sampler.batch(epoch, step))
    step += 1
  return sequences / (time.perf_counter() - t0)


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


def compile_fitting(cfg: Config, mesh: Any, key: Any) -> tuple[Config, Any, Any, Any, float]:
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
        state, batch, key)
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


def train_record(name: str, cfg: Config, warmup: int, steps: int,
                 prng: str = "threefry2x32") -> dict[str, Any]:
  """Compiles, warms up and times the train step of `cfg`, then measures the matmul peak
  (right after, so that a shared host's load weighs on both alike) and the sampler.
  prng: the JAX PRNG implementation of the dropout key (training draws threefry keys)."""
  import jax

  from nlm_jax import flops as flops_lib
  from nlm_jax import model as model_lib
  from nlm_jax import train

  mesh = train.make_mesh()
  devices = mesh.devices.flat
  platform = devices[0].platform
  if cfg.precision == "auto":  # as a training command resolves it
    cfg = dataclasses.replace(cfg, precision="fp32" if platform == "cpu" else "bf16")
  key = jax.random.key(1, impl=prng)
  requested_batch = cfg.batch_size
  cfg, state, lowered, compiled, compile_s = compile_fitting(cfg, mesh, key)
  dtype = compute_dtype(lowered.as_text())
  memory = step_memory_bytes(compiled)
  sampler = sampler_lib.TrainSampler(fasta_lib.Fasta(cfg.train_path), cfg,
                                     sampler_lib.encoding_for(cfg))
  n_params = int(sum(x.size for x in jax.tree.leaves(state.params)))
  log(f"  {n_params:,} parameters, compute dtype {dtype}, compiled in {compile_s:.1f} s"
      + (f", {memory / 1e9:.2f} GB per step" if memory else ""))
  host = [sampler.batch(0, i) for i in range(warmup + steps)]
  timed = host[warmup:]
  real_fraction = (sum(sampler.encoding.real_nucleotides(b) for b in timed)
                   / (len(timed) * cfg.batch_size * nucleotides_per_sample(cfg)))
  sequences_per_step = sum(sampler.encoding.n_sequences(b) for b in timed) / len(timed)
  batches = [train.to_device(b, mesh) for b in host]
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
  # As the training loop runs them: each step dispatched while the one before it runs (at
  # most two in flight), one wait at the end. Where a step is short, step_s (one step from
  # dispatch to result) also holds the host's dispatch, which the loop hides.
  outputs = []
  t0 = time.perf_counter()
  for batch in batches[warmup:]:
    state, metrics = compiled(state, batch, key)
    outputs.append(metrics)
    train.wait_for_previous(outputs)
  jax.block_until_ready((state, metrics))
  step_s_pipelined = (time.perf_counter() - t0) / steps
  del state, batches, outputs
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
  measured, peak_iters = flops_lib.peak_flops(peak_dtype, peak_n, devices[0])
  peak = flops_lib.Peak.of(devices[0].device_kind, peak_dtype, measured)
  log(f"  {measured / 1e9:.1f} GFLOP/s measured matmul rate, {flops / step_s / 1e9:.1f} GFLOP/s "
      f"achieved; MFU against the {peak.describe()}")

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
      "step_s_pipelined": step_s_pipelined,
      "train_samples_per_s": train_per_s, "nucleotides_per_sample": nucs,
      "train_nucleotides_per_s": train_per_s * nucs,
      "flops_per_step": flops, "flops_source": source, "flops_per_step_6nd": flops_6nd,
      "achieved_flops_per_s": achieved, **peak.fields(achieved),
      "peak_matmul_n": peak_n, "peak_matmul_iters": peak_iters, "peak_dtype": peak_dtype,
      "host_load_1m": load_1m, "allocator": allocator.describe(),
      "sampler_samples_per_s": sampler_per_s,
      "sampler_vs_train": sampler_per_s / (sequences_per_step / step_s), "packing": cfg.packing, "real_fraction": real_fraction,
      "real_nucleotides_per_s": real_fraction * train_per_s * nucs,
      "sequences_per_s": sequences_per_step / step_s,
      "mfu_real": achieved / peak.flops_per_s * real_fraction,
  }


def dropout_record(cfg: Config, warmup: int, steps: int) -> dict[str, Any]:
  """The train step of `cfg` with dropout keys of each PRNG implementation and without the
  encoder's dropout, one after another in this process ("kind": "dropout")."""
  lines = {prng: train_record(f"dropout_{prng}", cfg, warmup, steps, prng) for prng in PRNGS}
  lines["no_dropout"] = train_record("dropout_none", dataclasses.replace(cfg, encoder_dropout=0.0),
                                     warmup, steps)
  base = lines["threefry2x32"]
  record = {"kind": "dropout", "config": "dropout", "d_model": cfg.d_model, "N": cfg.N,
            "context_length": cfg.context_length, "batch_size": base["batch_size"],
            "compute_dtype": base["compute_dtype"],
            "step_s": {k: r["step_s"] for k, r in lines.items()},
            "mfu": {k: r["mfu"] for k, r in lines.items()},
            "vs_threefry": {k: r["step_s"] / base["step_s"] for k, r in lines.items()}}
  log("  dropout: " + ", ".join(f"{k} {v:.3f}x" for k, v in record["vs_threefry"].items())
      + " of threefry's step time")
  return record


def dropout_config(on_cpu: bool) -> dict[str, Any]:
  """The dropout configuration: BERT-base conv at kernel 9 (N 2 and batch 8 on CPU)."""
  return dict(BASE, kernel_size=9, remat="none", **(dict(N=2) if on_cpu else dict(batch_size=64)))


def packing_record(plain: dict[str, Any], packed: dict[str, Any]) -> dict[str, Any]:
  """The two GENCODE lines of one run, compared ("kind": "packing")."""
  ratio = lambda key: packed[key] / plain[key]
  record = {"kind": "packing", "config": "gencode_conv", "context_length": plain["context_length"],
            "real_fraction": plain["real_fraction"], "real_fraction_packed": packed["real_fraction"],
            "real_nucleotides_per_s_ratio": ratio("real_nucleotides_per_s"),
            "sequences_per_s_ratio": ratio("sequences_per_s"), "step_s_ratio": ratio("step_s")}
  log(f"  packing: real nucleotides {plain['real_fraction']:.3f} -> {packed['real_fraction']:.3f} "
      f"of a row; real nt/s x{record['real_nucleotides_per_s_ratio']:.2f}, sequences/s "
      f"x{record['sequences_per_s_ratio']:.2f}")
  return record


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


def max_rss(usage: Any) -> int:
  """ru_maxrss in bytes (KiB on Linux, bytes on macOS)."""
  return usage.ru_maxrss if sys.platform == "darwin" else usage.ru_maxrss * 1024


def run_pretrain(cmd: list[str], env: dict[str, str]) -> tuple[str, float, float, Any]:
  """Runs a pre-training command: (its log, wall seconds, seconds until its log said the
  training finished, its resource usage from os.wait4); RuntimeError if it failed."""
  t0 = time.perf_counter()
  proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  lines, finished_s = [], None
  for line in proc.stderr:
    lines.append(line)
    if "training finished in" in line:
      finished_s = time.perf_counter() - t0
  _, status, usage = os.wait4(proc.pid, 0)
  wall = time.perf_counter() - t0
  log_text = "".join(lines)
  if os.waitstatus_to_exitcode(status) or finished_s is None:
    raise RuntimeError(f"the pre-training command failed ({os.waitstatus_to_exitcode(status)}):\n"
                       f"{log_text[-3000:]}")
  return log_text, wall, finished_s, usage


def pretrain_startup(args: list[str]) -> dict[str, Any]:
  """`python -m nlm_jax.pretrain ARGS` as a user runs it: seconds from its start to its first
  training step, and its peak memory."""
  log_text, _, finished_s, usage = run_pretrain([sys.executable, "-m", "nlm_jax.pretrain", *args],
                                                child_env("mimalloc"))
  return {"startup_s": finished_s - float(_FINISHED_RE.search(log_text).group(1)),
          "max_rss_bytes": max_rss(usage)}


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
  log_text, wall, finished_s, usage = run_pretrain(cmd, child_env(allocator_choice))
  done = _FINISHED_RE.search(log_text)
  loop_s, train_s, eval_s = (float(x) for x in done.group(1, 2, 3))
  real = [float(x) for x in _REAL_NT_RE.findall(log_text)]
  return {
      "kind": "e2e", "config": name, "data": source, "n_train": E2E_SPLIT[0],
      "n_valid": E2E_SPLIT[1], "flags": " ".join([*E2E_FLAGS, *extra, *_E2E_FLAGS.value]),
      "allocator": _ALLOCATOR_RE.search(log_text).group(1),
      "devices": "{} {}".format(*_DEVICES_RE.search(log_text).groups()),
      "compilation_cache": cache_state,
      "compiled_from_cache": "(from the compilation cache)" in log_text,
      "wall_s": wall, "user_s": usage.ru_utime, "sys_s": usage.ru_stime,
      "minor_faults": usage.ru_minflt, "max_rss_bytes": max_rss(usage),
      "startup_s": finished_s - loop_s, "train_s": train_s, "eval_s": eval_s,
      "other_s": round(loop_s - train_s - eval_s, 3), "exit_s": wall - finished_s,
      "train_real_nucleotides_per_s": real[-1] if real else None,
      "accuracy_valid": float(_ACCURACY_RE.findall(log_text)[-1]), "host_load_1m": load_1m,
  }


def epoch_record(folder: str, model_flags: tuple[str, ...] = EPOCH_FLAGS,
                 data: tuple[int, int] = EPOCH_DATA) -> dict[str, Any]:
  """One epoch of the pre-training command (a subprocess) and the split of its wall time
  into training steps, evaluation, checkpoint and reports, from its log."""
  from nlm_jax import synthetic  # here: its flags are not the bench's

  data_dir = os.path.join(folder, f"epoch_data_{data[0]}_{data[1]}")
  train, valid = (os.path.join(data_dir, f) for f in ("train.fasta", "valid.fasta"))
  if not os.path.exists(train):
    synthetic.write_demo(data_dir, *data)
  run_dir = os.path.join(folder, "run_epoch")
  shutil.rmtree(run_dir, ignore_errors=True)
  cmd = [sys.executable, "-m", "nlm_jax.pretrain", train, valid, *model_flags,
         f"--model_dir={run_dir}/models", f"--results_dir={run_dir}/results",
         f"--compilation_cache={os.path.join(folder, 'cache_epoch')}"]
  log_text, _, _, _ = run_pretrain(cmd, child_env("mimalloc"))
  loop_s, train_s = (float(x) for x in _FINISHED_RE.search(log_text).group(1, 2))
  eval_s, checkpoint_s, report_s = (float(x) for x in _SPLIT_RE.search(log_text).groups())
  return {"kind": "epoch", "config": "epoch", "flags": " ".join(model_flags),
          "n_train": data[0], "n_valid": data[1],
          "steps": int(_STEPS_RE.search(log_text).group(1)),
          "eval_rows": int(_EVAL_ROWS_RE.search(log_text).group(1)),
          "epoch_s": train_s + eval_s + checkpoint_s + report_s, "train_s": train_s,
          "eval_s": eval_s, "checkpoint_s": checkpoint_s, "report_s": report_s,
          "outside_steps_share": float(_OUTSIDE_RE.findall(log_text)[-1]) / 100,
          "run_s": loop_s}


def e2e_records(folder: str, configs: list[str]) -> None:
  """Emits the epoch line, then the e2e lines: with mimalloc in a cold then a warm compilation
  cache, and with the system's malloc (cold), each in a fresh model folder."""
  if "epoch" in configs:
    log(f"one epoch at the defaults: {' '.join(EPOCH_FLAGS)}, {EPOCH_DATA[0]:,} / "
        f"{EPOCH_DATA[1]:,} synthetic sequences")
    record = epoch_record(folder)
    log(f"  {record['epoch_s']:.1f} s: steps {record['train_s']:.1f} s, evaluation "
        f"{record['eval_s']:.1f} s, checkpoint {record['checkpoint_s']:.1f} s, reports "
        f"{record['report_s']:.1f} s: {100 * record['outside_steps_share']:.1f}% outside steps")
    emit(record)
  runs = []
  if "e2e" in configs:
    runs += [("e2e", "cache_mimalloc", "cold", "mimalloc", ()),
             ("e2e", "cache_mimalloc", "warm", "mimalloc", ())]
  if "e2e_system" in configs:
    runs.append(("e2e_system", "cache_system", "cold", "system", ()))
  if "e2e_one_device" in configs:
    runs += [("e2e_one_device", "cache_one_device", "cold", "mimalloc", ("--cpu_devices=1",)),
             ("e2e_one_device", "cache_one_device", "warm", "mimalloc", ("--cpu_devices=1",))]
  if not runs:
    return
  train, valid, source = e2e_data(folder)
  log(f"the whole pre-training command on {source} data ({E2E_SPLIT[0]:,} / {E2E_SPLIT[1]:,}), "
      f"{' '.join([*E2E_FLAGS, *_E2E_FLAGS.value])}")
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
  configs = _CONFIGS.value
  unknown = [c for c in configs if c not in ALL_CONFIGS]
  if unknown:
    raise app.UsageError(f"unknown --configs {', '.join(unknown)}: choose from "
                         f"{', '.join(ALL_CONFIGS)}")
  if _LNCRNAPY.value and not flags.FLAGS["configs"].present:
    configs = ["peer", *configs]
  # A terminated bench still removes its temporary folder (and a large FASTA in it).
  signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
  own_dir = _BENCH_DIR.value is None
  folder = tempfile.mkdtemp(prefix="nlm_bench_") if own_dir else _BENCH_DIR.value
  os.makedirs(folder, exist_ok=True)
  start = time.perf_counter()
  try:
    if "peer" in configs:  # first: lncRNA-Py needs the GPU's memory before JAX takes it
      import jax

      from nlm_jax import bench_peer

      size = "cpu" if jax.default_backend() == "cpu" else "accelerator"
      for record in bench_peer.records(e2e_data(folder), size, _LNCRNAPY.value,
                                       _LNCRNAPY_PYTHON.value, train_record, log):
        emit(record)
    if any(c in CONFIGS for c in configs):
      demo = os.path.join(folder, "demo")
      train_fa, valid_fa = (os.path.join(demo, f) for f in ("train.fasta", "valid.fasta"))
      if not os.path.exists(train_fa):
        from nlm_jax import synthetic  # here: its flags are not the bench's

        log(f"writing the demo data to {demo}")
        synthetic.write_demo(demo, 3000, 500)
      lines = {}
      for name in (c for c in configs if c in CONFIGS):
        warmup, steps = DEFAULT_STEPS[name]
        warmup = warmup if _WARMUP.value is None else _WARMUP.value
        steps = steps if _STEPS.value is None else _STEPS.value
        kw = dict(CONFIGS[name], **({"remat": _REMAT.value} if _REMAT.value else {}))
        data = e2e_data(folder)[:2] if name.startswith("gencode") else (train_fa, valid_fa)
        cfg = Config(*data, precision=_PRECISION.value, **kw).validate()
        log(f"{name}: {cfg.encoding_method}, d_model {cfg.d_model}, N {cfg.N}, context "
            f"{cfg.context_length}, batch {cfg.batch_size}{', packed' if cfg.packing else ''}; "
            f"{warmup} warm-up + {steps} timed steps")
        try:
          lines[name] = train_record(name, cfg, warmup, steps)
          emit(lines[name])
        except MemoryError as e:
          log(f"  skipped: {e}")
          emit({"kind": "train", "config": name, "error": f"skipped: {e}"})
      if "gencode_conv" in lines and "gencode_conv_packed" in lines:
        emit(packing_record(lines["gencode_conv"], lines["gencode_conv_packed"]))
    if "dropout" in configs:
      import jax

      on_cpu = jax.default_backend() == "cpu"
      demo = os.path.join(folder, "demo")
      if not os.path.exists(os.path.join(demo, "train.fasta")):
        from nlm_jax import synthetic

        synthetic.write_demo(demo, 3000, 500)
      cfg = Config(os.path.join(demo, "train.fasta"), os.path.join(demo, "valid.fasta"),
                   precision=_PRECISION.value, **dropout_config(on_cpu)).validate()
      warmup = 1 if _WARMUP.value is None else _WARMUP.value
      steps = (3 if on_cpu else 10) if _STEPS.value is None else _STEPS.value
      log(f"dropout: d_model {cfg.d_model}, N {cfg.N}, batch {cfg.batch_size}; PRNGs {PRNGS} "
          "and no dropout")
      emit(dropout_record(cfg, warmup, steps))
    if any(c in E2E_CONFIGS for c in configs):
      e2e_records(folder, configs)
    if "fasta" in configs and _FASTA_GB.value > 0:
      from nlm_jax import bench_fasta

      emit(bench_fasta.record(folder, _FASTA_GB.value, _FASTA_GZIP_GB.value, _STREAM_S.value,
                              GENCODE if os.path.exists(GENCODE) else None, log,
                              pretrain_startup))
  finally:
    if own_dir:
      shutil.rmtree(folder, ignore_errors=True)
  log(f"done in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
  allocator.preload()  # re-executes this command with mimalloc, before JAX loads
  app.run(main)
