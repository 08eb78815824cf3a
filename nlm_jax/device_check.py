r"""The one prepared accelerator check: every figure a GPU or TPU run should give, in one
command, one JSON line per result as it comes.

  bash launch/device_check.sh [OUT_DIR]        # or: python -m nlm_jax.device_check

Each step prints one or more JSON lines {"step": ..., ...}; a failed step prints
{"step": ..., "error": ...} and the others still run. With an accelerator the sizes are
BERT-base's and each step (each try of the context search too) runs in a process of its
own: a fresh peak-memory counter, and a crash or a hang (--step_timeout_s) costs that step
only. Without one (or with --tiny) the same steps run at tiny sizes in one process, in
about a minute on 2 CPU cores, so the check never rots.

Steps:
  env              versions, devices, nvidia-smi, cuDNN, device memory
  attention        --attention auto (cuDNN's fused kernel on GPUs) against the plain
                   formula on padded bf16 batches, then on packed ones (--packing: the
                   mask of each row's sequences): forward and gradient, max errors
                   relative to the reference's largest value, and whether the compiled
                   program holds the fused kernel
  bf16_step        one train step in bf16 and in fp32 from the same parameters and batch:
                   loss, gradient norm and update, relative differences, all finite
  bench_conv       the benchmark's base_conv line (nlm_jax.bench) in bf16 at batch 8 and
                   at the largest batch up to 64 that fits: step time, samples/s,
                   nucleotides/s, MFU against the chip's dense bf16 peak (flops.CHIPS)
                   and against the bf16 matmul rate measured beside it
  longest_context  the longest conv context (kernel 9, up to 4096 positions = 36.8 kb)
                   that trains at batch 1 with BERT-base, the flags it needs and the peak
                   device memory; one line per try
  demo             launch/demo.flags end to end on the synthetic data: wall time,
                   Accuracy|valid
  embed            embedding throughput (nucleotides/s) of a BERT-base conv model
  bench_packed     BERT-base conv at the paper's kernel 9 and context 768, bf16, batch 8, on
                   GENCODE's lncRNAs (generated alike without the shared data folder),
                   without and with --packing: real nucleotides/s, sequences/s, the real
                   share of a row, MFU and MFU of real work, and the packing line that
                   compares them (nlm_jax.bench's gencode_conv configurations)
  bench_kmer       the base_kmer line, as bench_conv
  peer             with --lncrnapy DIR (and --lncrnapy_python, the Python that has torch):
                   lncRNA-Py's own pre-training step beside nlm_jax's at BERT-base conv,
                   kernel 9, context 768, batch 8 (with --packing too) and 64, each
                   program at its default precision: samples/s, real nucleotides/s, step
                   time and MFU of each and their ratios (bench_peer.py); without
                   --lncrnapy a line says it was skipped
  dropout          the dropout's random bits: BERT-base conv (kernel 9, context 768) bf16
                   train step at batch 64 with dropout keys of threefry2x32 (training's),
                   rbg and unsafe_rbg, and without dropout (nlm_jax.bench's dropout line)
  epoch            one epoch of the pre-training command at BERT-base conv, kernel 9,
                   context 768, batch 8, with lncRNA-Py's defaults (10,000 samples, 2,500 +
                   2,500 evaluation rows): the share of its wall time outside the training
                   steps (evaluation, checkpoint, reports; nlm_jax.bench's epoch line)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Any, Callable, Iterator

from absl import app
from absl import flags

from nlm_jax import bench  # its flags (matmul peak size, sampler seconds) are parsed here too

STEPS = ("env", "attention", "bf16_step", "bench_conv", "peer", "bench_packed", "epoch",
         "longest_context", "demo", "embed", "bench_kmer", "dropout")
# Steps that take longer than --step_timeout_s: this many times it.
LONG_STEPS = {"longest_context": 3, "peer": 3, "epoch": 2, "dropout": 2}

_ONLY = flags.DEFINE_list("only", list(STEPS), f"Steps to run, of {', '.join(STEPS)}.")
_TINY = flags.DEFINE_boolean("tiny", None, "Tiny sizes (default: when there is no accelerator).")
_OUT = flags.DEFINE_string("out", None, "Also append every JSON line to this file.")
_STEP_TIMEOUT = flags.DEFINE_integer("step_timeout_s", 150, "Seconds a step may take.")
_CHILD = flags.DEFINE_boolean("child", False, "Internal: run the --only step in this process.")
_DEADLINE = flags.DEFINE_integer("deadline_s", 0, "Stop starting steps (each then prints a "
                                 "'skipped' error line) this many seconds after the start, and "
                                 "cut a running step's time to what is left; 0: no deadline.")
_ISOLATE = flags.DEFINE_boolean("isolate", None, "A process per step (default: unless --tiny).")

DEMO_FLAGS = os.path.join(os.path.dirname(__file__), "..", "launch", "demo.flags")


_sink: list[Any] = []  # the --out file, while the driver runs


def emit(record: dict[str, Any] | str) -> None:
  """One JSON line on stdout (and in the --out file)."""
  line = record if isinstance(record, str) else json.dumps(record, default=str)
  print(line, flush=True)
  for f in _sink:
    f.write(line + "\n")
    f.flush()


def isolated() -> bool:
  return _ISOLATE.value if _ISOLATE.value is not None else not is_tiny()


def is_tiny() -> bool:
  if _TINY.value is not None:
    return _TINY.value
  import jax

  return jax.default_backend() == "cpu"


def base(**kw: Any) -> dict[str, Any]:
  """BERT-base conv (kernel 9), or a tiny model of the same shape of code."""
  if is_tiny():
    return {**dict(encoding_method="conv", d_model=64, N=2, h=4, n_kernels=64, kernel_size=9,
                   context_length=32), **kw}
  return {**dict(encoding_method="conv", d_model=768, N=12, n_kernels=768, kernel_size=9,
                 context_length=768), **kw}


def relative_error(a: Any, b: Any) -> float:
  """max |a - b| / max |b|, in float32."""
  import numpy as np

  a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
  return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30))


def out_of_memory(e: BaseException) -> bool:
  text = str(e)
  return any(s in text for s in ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory",
                                 "MemoryError")) or isinstance(e, MemoryError)


class StepError(Exception):
  """A step's answer that is not a crash (bad input, say): its line gives the message
  alone, without a traceback."""


def first_line(e: BaseException) -> str:
  lines = [l for l in str(e).splitlines() if l.strip()]
  return f"{type(e).__name__}: {lines[0][:300] if lines else ''}"


# ----------------------------------------------------------------------------- steps


def step_env() -> Iterator[dict[str, Any]]:
  import flax
  import jax
  import jaxlib
  import optax
  import orbax.checkpoint as ocp

  record: dict[str, Any] = {
      "python": platform.python_version(), "jax": jax.__version__, "jaxlib": jaxlib.__version__,
      "flax": flax.__version__, "optax": optax.__version__, "orbax": ocp.__version__,
      "backend": jax.default_backend(), "device_count": jax.device_count(),
      "devices": sorted({d.device_kind for d in jax.devices()}), "tiny": is_tiny()}
  try:
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                          "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
    record["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()[:200]
  except (OSError, subprocess.SubprocessError) as e:
    record["nvidia_smi"] = f"unavailable ({type(e).__name__})"
  with contextlib.suppress(Exception):
    from jax._src.lib import cuda_versions  # private: absent on CPU-only installs

    record["cudnn"] = cuda_versions.cudnn_get_version()
  with contextlib.suppress(Exception):
    record["device_memory_bytes"] = jax.devices()[0].memory_stats()["bytes_limit"]
  yield record


def step_attention() -> Iterator[dict[str, Any]]:
  """auto (the path training takes) against the plain formula computed in float32 from the
  same bf16 inputs, on rows padded to different lengths."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from nlm_jax import model as model_lib

  b, l, h, e = (3, 40, 4, 16) if is_tiny() else (4, 1024, 12, 64)
  rng = np.random.default_rng(0)
  q, k, v, ct = (jnp.asarray(rng.normal(size=(b, l, h, e)), jnp.bfloat16) for _ in range(4))
  lengths = jnp.array([l, l // 2 + 3, 1, l - 5][:b], jnp.int32)

  # Packed rows (--packing): sequences of different lengths one after another, padding last.
  cuts = np.sort(rng.choice(np.arange(1, l - 2), 5, replace=False))
  segments = jnp.asarray(np.stack([np.searchsorted(cuts, np.arange(l), side="right") + 1] * b)
                         * (np.arange(l) < l - 2), jnp.int32)

  def loss(impl, q, k, v, packed):
    out = model_lib.attention(q, k, v, lengths, impl, segments if packed else None)
    return jnp.sum(out.astype(jnp.float32) * ct.astype(jnp.float32)), out

  def run(impl, dtype, packed):
    f = jax.jit(jax.value_and_grad(lambda *a: loss(impl, *a, packed), argnums=(0, 1, 2),
                                   has_aux=True))
    args = [x.astype(dtype) for x in (q, k, v)]
    text = f.lower(*args).as_text()
    (_, out), grads = f(*args)
    return out, grads, text

  for packed in (False, True):
    out, grads, text = run("auto", jnp.bfloat16, packed)
    ref_out, ref_grads, _ = run("reference", jnp.float32, packed)
    # Padded query rows are outputs too (they attend to the real keys): all rows compared.
    fwd = relative_error(out, ref_out)
    grad = max(relative_error(g, r) for g, r in zip(grads, ref_grads))
    fused = "cudnn" in text.lower() and "fmha" in text.lower()
    tolerance = {"forward": 2e-2, "gradient": 5e-2}
    yield {"shape_BxLxHxE": [b, l, h, e], "packed": packed,
           **({"segments": int(segments.max())} if packed else {"lengths": lengths.tolist()}),
           "dtype": "bfloat16", "fused_cudnn": fused, "forward_rel_err": fwd,
           "gradient_rel_err": grad, "tolerance": tolerance,
           "ok": bool(fwd <= tolerance["forward"] and grad <= tolerance["gradient"])}


def demo_data(folder: str, n_train: int, n_valid: int) -> tuple[str, str]:
  from nlm_jax import synthetic

  train_fa = os.path.join(folder, "train.fasta")
  if not os.path.exists(train_fa):
    synthetic.write_demo(folder, n_train, n_valid)
  return train_fa, os.path.join(folder, "valid.fasta")


def step_bf16_step() -> Iterator[dict[str, Any]]:
  """One train step from the same parameters and batch in fp32 and in bf16."""
  import jax
  import numpy as np
  import optax

  from nlm_jax import fasta as fasta_lib
  from nlm_jax import sampler as sampler_lib
  from nlm_jax import train
  from nlm_jax.config import Config

  with tempfile.TemporaryDirectory() as folder:
    fastas = demo_data(folder, 200, 50)
    cfg = Config(*fastas, **base(batch_size=8, context_length=32 if is_tiny() else 256),
                 encoder_dropout=0.0, precision="fp32")
    mesh = train.make_mesh(jax.devices()[:1])
    encoding = sampler_lib.encoding_for(cfg)
    batch = sampler_lib.TrainSampler(fasta_lib.Fasta(cfg.train_path), cfg, encoding).batch(0, 0)
    results = {}
    for precision in ("fp32", "bf16"):
      c = dataclasses.replace(cfg, precision=precision)
      state = train.init_state(c, mesh, jax.random.key(0))
      before = jax.device_get(state.params)
      state, m = train.make_train_step(c, mesh)(state, train.to_device(batch, mesh),
                                                jax.random.key(1))
      update = jax.tree.map(lambda a, b: np.asarray(a) - b, jax.device_get(state.params), before)
      m = jax.device_get(m)
      results[precision] = {"loss": float(m["loss_sum"] / m["count"]),
                            "grad_norm": float(m["grad_norm"]),
                            "update_norm": float(optax.tree.norm(update)), "update": update}
  f32, b16 = results["fp32"], results["bf16"]
  flat = lambda t: np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)])
  u32, u16 = flat(f32["update"]), flat(b16["update"])
  cosine = float(u32 @ u16 / (np.linalg.norm(u32) * np.linalg.norm(u16)))
  diffs = {"loss_rel_diff": abs(b16["loss"] - f32["loss"]) / f32["loss"],
           "grad_norm_rel_diff": abs(b16["grad_norm"] - f32["grad_norm"]) / f32["grad_norm"],
           "update_cosine": cosine}
  # Adam's first update is about lr * sign(gradient): elements with tiny gradients can
  # flip sign in bf16, so the updates' cosine is the loosest of the three.
  tolerance = {"loss_rel_diff": 0.01, "grad_norm_rel_diff": 0.05, "update_cosine_min": 0.95}
  finite = all(math.isfinite(r[k]) for r in (f32, b16) for k in ("loss", "grad_norm"))
  yield {"config": {k: getattr(cfg, k) for k in ("d_model", "N", "context_length", "batch_size")},
         "fp32": {k: v for k, v in f32.items() if k != "update"},
         "bf16": {k: v for k, v in b16.items() if k != "update"}, **diffs,
         "tolerance": tolerance, "finite": finite,
         "ok": bool(finite and diffs["loss_rel_diff"] <= tolerance["loss_rel_diff"]
                    and diffs["grad_norm_rel_diff"] <= tolerance["grad_norm_rel_diff"]
                    and cosine >= tolerance["update_cosine_min"])}


def bench_lines(name: str) -> Iterator[dict[str, Any]]:
  """nlm_jax.bench's train line of `name` in bf16 at batch 8, then at the largest batch
  up to 64 that fits (trying 64, 32, 16)."""
  from nlm_jax.config import Config

  tiny = is_tiny()
  if tiny:  # a small matmul peak and a short sampler timing: the figures mean little here
    flags.FLAGS.peak_n, flags.FLAGS.sampler_s = 256, 0.1
  batches = (8, 16) if tiny else (8, 64, 32, 16)
  warmup, steps = (1, 1) if tiny else (3, 10)
  # On an accelerator nothing is recomputed (--remat none): memory is not what limits it.
  kw = dict(bench.CONFIGS["demo_kmer" if "kmer" in name else "demo_conv"], context_length=16,
            N=1) if tiny else dict(bench.CONFIGS[name], remat="none")
  with tempfile.TemporaryDirectory() as folder:
    fastas = demo_data(folder, 300 if tiny else 3000, 50)
    fitted = False
    for batch in batches:
      if batch != 8 and fitted:
        return
      cfg = Config(*fastas, **dict(kw, batch_size=batch, precision="bf16")).validate()
      try:
        record = bench.train_record(name, cfg, warmup, steps)
      except Exception as e:  # noqa: BLE001 - out of memory is an answer here
        if not out_of_memory(e):
          raise
        yield {"config": name, "batch_size": batch, "fits": False, "error": first_line(e)}
        continue
      fitted = batch != 8
      keep = ("config", "batch_size", "precision", "compute_dtype", "remat", "compile_s",
              "step_memory_bytes", "step_s", "step_s_pipelined", "train_samples_per_s",
              "train_nucleotides_per_s",
              "flops_per_step", "flops_source", "mfu", "peak_flops_per_s", "peak_source",
              "mfu_of_measured_peak", "measured_peak_flops_per_s", "devices")
      yield {"fits": True, **{k: record.get(k) for k in keep}}


def step_bench_conv() -> Iterator[dict[str, Any]]:
  yield from bench_lines("base_conv")


def step_bench_packed() -> Iterator[dict[str, Any]]:
  from nlm_jax.config import Config

  tiny = is_tiny()
  if tiny:
    flags.FLAGS.peak_n, flags.FLAGS.sampler_s = 256, 0.1
  kw = (dict(bench.GENCODE_CONV, d_model=16, n_kernels=16, N=1, h=2, context_length=64) if tiny
        else dict(bench.BASE, kernel_size=9, remat="none"))
  warmup, steps = (1, 1) if tiny else (3, 10)
  keep = ("config", "batch_size", "packing", "step_s", "real_fraction", "real_nucleotides_per_s",
          "sequences_per_s", "train_nucleotides_per_s", "mfu", "mfu_real", "peak_flops_per_s",
          "peak_source", "mfu_of_measured_peak")
  with tempfile.TemporaryDirectory() as folder:
    fastas = bench.e2e_data(folder)[:2]
    lines = {}
    for packing in (False, True):
      name = "gencode_conv_packed" if packing else "gencode_conv"
      cfg = Config(*fastas, **dict(kw, packing=packing, precision="bf16")).validate()
      lines[name] = bench.train_record(name, cfg, warmup, steps)
      yield {k: lines[name].get(k) for k in keep}
    yield bench.packing_record(lines["gencode_conv"], lines["gencode_conv_packed"])


def step_bench_kmer() -> Iterator[dict[str, Any]]:
  yield from bench_lines("base_kmer")


def step_peer() -> Iterator[dict[str, Any]]:
  from nlm_jax import bench_peer

  if not flags.FLAGS.lncrnapy:
    yield {"skipped": "no --lncrnapy DIR (lncRNA-Py's checkout; --lncrnapy_python: the Python "
                      "that has torch)"}
    return
  tiny = is_tiny()
  if tiny:
    flags.FLAGS.peak_n, flags.FLAGS.sampler_s = 256, 0.1
  with tempfile.TemporaryDirectory() as folder:
    for record in bench_peer.records(bench.e2e_data(folder), "tiny" if tiny else "accelerator",
                                     flags.FLAGS.lncrnapy, flags.FLAGS.lncrnapy_python,
                                     bench.train_record, bench.log):
      if "config" not in record:  # lncRNA-Py cannot run there: nothing was timed
        raise StepError(record["error"])
      yield {k: v for k, v in record.items() if k != "kind"}


def step_dropout() -> Iterator[dict[str, Any]]:
  from nlm_jax.config import Config

  tiny = is_tiny()
  if tiny:
    flags.FLAGS.peak_n, flags.FLAGS.sampler_s = 256, 0.1
  kw = (dict(base(), context_length=16, N=1, batch_size=8) if tiny
        else bench.dropout_config(on_cpu=False))
  with tempfile.TemporaryDirectory() as folder:
    cfg = Config(*demo_data(folder, 300, 50), **dict(kw, precision="bf16")).validate()
    record = bench.dropout_record(cfg, 1, 2 if tiny else 10)
  yield {k: v for k, v in record.items() if k != "kind"}


def step_epoch() -> Iterator[dict[str, Any]]:
  if is_tiny():
    model = ("--d_model=16", "--N=1", "--h=2", "--n_kernels=16", "--kernel_size=9",
             "--context_length=32", "--batch_size=8", "--epochs=1", "--n_samples_per_epoch=400",
             "--n_eval=200")
    data = (300, 200)
  else:
    model = ("--d_model=768", "--N=12", "--n_kernels=768", "--kernel_size=9",
             "--context_length=768", "--batch_size=8", "--epochs=1")
    data = bench.EPOCH_DATA
  with tempfile.TemporaryDirectory() as folder:
    record = bench.epoch_record(folder, model, data)
  yield {k: v for k, v in record.items() if k not in ("kind", "config")}


def train_steps(cfg: Any, n: int) -> dict[str, Any]:
  """Compiles cfg's (conv) train step and runs n steps on windows of random nucleotides
  without padding (a fused kernel could skip padded keys), 15% of them targets; returns
  compile seconds, the best step seconds and the peak device memory."""
  import jax
  import numpy as np

  from nlm_jax import train

  mesh = train.make_mesh(jax.devices()[:1])
  state = train.init_state(cfg, mesh, jax.random.key(0))
  rng = np.random.default_rng(0)
  codes = rng.integers(0, 4, (cfg.batch_size, cfg.n_nucleotides)).astype(np.uint8)
  targets = np.where(rng.random(codes.shape) < 0.15, codes.astype(np.int8), np.int8(-1))
  batch = train.to_device({"inputs": codes, "targets": targets}, mesh)
  t0 = time.perf_counter()
  compiled = train.make_train_step(cfg, mesh).lower(state, batch, jax.random.key(1)).compile()
  compile_s = time.perf_counter() - t0
  memory = compiled.memory_analysis()
  times = []
  for _ in range(n):
    t0 = time.perf_counter()
    state, metrics = compiled(state, batch, jax.random.key(1))
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
  loss = float(metrics["loss_sum"] / metrics["count"])
  stats = {}
  with contextlib.suppress(Exception):
    stats = jax.devices()[0].memory_stats() or {}
  return {"compile_s": compile_s, "step_s": min(times[1:] or times), "loss": loss,
          "finite": math.isfinite(loss),
          "step_memory_bytes": int(memory.argument_size_in_bytes + memory.output_size_in_bytes
                                   - memory.alias_size_in_bytes + memory.temp_size_in_bytes),
          "peak_device_bytes": stats.get("peak_bytes_in_use")}


def step_longest_context() -> Iterator[dict[str, Any]]:
  """Batch 1, bf16, kernel 9; each try in a process of its own (a fresh peak counter, and
  an out-of-memory try does not poison the next): the longest context first, then with
  more rematerialisation, then shorter contexts; finally the XLA attention at the
  longest context that trained."""
  tiny = is_tiny()
  contexts = (128, 64) if tiny else (4096, 3072, 2048, 1800, 1024)
  tries = [(c, r, "auto") for c in contexts for r in ("none", "block")]
  best = None
  for context, remat, attention in tries:
    if best is not None:
      break
    record = _one_context(context, remat, attention)
    yield record
    if record.get("trains"):
      best = record
  if best is None:
    raise RuntimeError("no context trained at batch 1")
  yield _one_context(best["context_length"], best["remat"], "xla")
  yield {"longest_context": best["context_length"], "nucleotides": best["nucleotides"],
         "flags": f"--context_length={best['context_length']} --kernel_size=9 "
                  f"--batch_size=1 --precision=bf16 --remat={best['remat']}",
         "peak_device_bytes": best.get("peak_device_bytes"),
         "step_memory_bytes": best.get("step_memory_bytes")}


def _one_context(context: int, remat: str, attention: str) -> dict[str, Any]:
  head = {"context_length": context, "remat": remat, "attention": attention}
  if not isolated():
    flags.FLAGS.context_try = f"{context},{remat},{attention}"
    try:
      return next(step_context_try())
    except Exception as e:  # noqa: BLE001 - one try's failure is its answer
      return {**head, "trains": False, "error": first_line(e)}
  args = [sys.executable, "-m", "nlm_jax.device_check", "--child", "--only=context_try",
          f"--context_try={context},{remat},{attention}"]
  if _TINY.value is not None:
    args.append("--tiny" if _TINY.value else "--notiny")
  try:
    out = subprocess.run(args, capture_output=True, text=True, timeout=_STEP_TIMEOUT.value)
  except subprocess.TimeoutExpired:
    return {**head, "trains": False, "error": f"timed out after {_STEP_TIMEOUT.value} s"}
  lines = [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]
  if lines and "trains" in lines[-1]:
    return lines[-1]
  error = lines[-1].get("error") if lines else _last_error(out.stderr, out.returncode)
  return {**head, "trains": False, "error": error}


_CONTEXT_TRY = flags.DEFINE_string("context_try", None, "Internal: CONTEXT,REMAT,ATTENTION.")


def step_context_try() -> Iterator[dict[str, Any]]:
  from nlm_jax.config import Config

  context, remat, attention = _CONTEXT_TRY.value.split(",")
  cfg = Config("t", "v", **base(batch_size=1, precision="bf16", remat=remat, attention=attention,
                                context_length=int(context)))
  head = {"context_length": cfg.context_length, "nucleotides": cfg.n_nucleotides, "remat": remat,
          "attention": attention, "batch_size": 1}
  try:
    yield {**head, "trains": True, **train_steps(cfg, 3)}
  except Exception as e:  # noqa: BLE001 - out of memory is an answer here
    if not out_of_memory(e):
      raise
    yield {**head, "trains": False, "error": first_line(e)}


def step_demo() -> Iterator[dict[str, Any]]:
  """The demo as the README gives it: synthetic data, then pretrain with demo.flags."""
  from nlm_jax import history

  tiny = is_tiny()
  extra = ["--epochs=1", "--n_samples_per_epoch=64", "--batch_size=8"] if tiny else []
  with tempfile.TemporaryDirectory() as folder:
    t0 = time.perf_counter()
    train_fa, valid_fa = demo_data(os.path.join(folder, "data"), 200 if tiny else 3000,
                                   40 if tiny else 500)
    out = subprocess.run(
        [sys.executable, "-m", "nlm_jax.pretrain", train_fa, valid_fa,
         f"--flagfile={DEMO_FLAGS}", "--results_dir=R", "--model_dir=M", *extra],
        cwd=folder, capture_output=True, text=True, timeout=_STEP_TIMEOUT.value - 10)
    wall = time.perf_counter() - t0
    if out.returncode:
      raise RuntimeError(_last_error(out.stderr, out.returncode))
    (name,) = os.listdir(os.path.join(folder, "R"))
    rows = history.read_csv(os.path.join(folder, "R", name, "history.csv"))
  progress = [l for l in out.stderr.splitlines() if "steps/s" in l]
  yield {"wall_s": wall, "epochs": len(rows), "Accuracy|valid": rows[-1]["Accuracy|valid"],
         "flags": " ".join(extra) or "launch/demo.flags",
         "last_epoch_line": progress[-1].split("] ", 1)[-1][:300] if progress else None}


def step_embed() -> Iterator[dict[str, Any]]:
  """nlm_jax.load's Model on a randomly initialised BERT-base conv model: nucleotides/s
  of Model.embed over synthetic sequences, after one warm-up call per bucket."""
  import jax
  import numpy as np

  from nlm_jax import pretrained
  from nlm_jax import synthetic
  from nlm_jax import train
  from nlm_jax.config import Config

  tiny = is_tiny()
  cfg = Config("t", "v", **base(precision="bf16" if not tiny else "fp32"))
  params = train.init_state(cfg, train.make_mesh(jax.devices()[:1]), jax.random.key(0)).params
  model = pretrained.Model(cfg, jax.device_get(params), precision="auto",
                           batch_size=8 if tiny else 64)
  seqs = synthetic.sequences(32 if tiny else 1000, np.random.default_rng(0), min_len=500,
                             max_len=1000 if tiny else 8000)
  model.embed(seqs)  # compile every bucket
  t0 = time.perf_counter()
  x = model.embed(seqs)
  seconds = time.perf_counter() - t0
  nt = sum(len(s) for s in seqs)
  yield {"model": {k: getattr(cfg, k) for k in ("d_model", "N", "context_length", "kernel_size")},
         "precision": model.cfg.precision, "sequences": len(seqs), "nucleotides": nt,
         "seconds": seconds, "nucleotides_per_s": nt / seconds,
         "finite": bool(np.isfinite(x).all())}


STEP_FNS: dict[str, Callable[[], Iterator[dict[str, Any]]]] = {
    name: globals()[f"step_{name}"] for name in STEPS + ("context_try",)}


# ----------------------------------------------------------------------------- driver


def _last_error(stderr: str, code: int) -> str:
  lines = [l for l in stderr.splitlines() if l.strip() and not l.startswith((" ", "I0", "W0"))]
  return f"exit {code}: {lines[-1][:300] if lines else 'no message'}"


def run_child(name: str) -> int:
  """Runs one step here, a JSON line per result; an exception becomes an error line."""
  t0 = time.perf_counter()
  try:
    for record in STEP_FNS[name]():
      if name != "context_try":
        record = {"step": name, **record, "elapsed_s": round(time.perf_counter() - t0, 2)}
      emit(record)
  except Exception as e:  # noqa: BLE001 - reported, and the other steps go on
    if not isinstance(e, StepError):
      traceback.print_exc()
    emit({"step": name, "error": str(e) if isinstance(e, StepError) else first_line(e),
          "elapsed_s": round(time.perf_counter() - t0, 2)})
    return 1
  return 0


def run_isolated(name: str, time_left: float) -> int:
  """Runs one step in a child process, passing its JSON lines on; returns its exit status.
  A child that ends without a line (a crash, a hang) gets an error line; its stderr goes
  to the --out file's .stderr neighbour."""
  args = [sys.executable, "-m", "nlm_jax.device_check", "--child", f"--only={name}",
          f"--step_timeout_s={_STEP_TIMEOUT.value}", "--isolate"]
  if name == "peer" and flags.FLAGS.lncrnapy:
    args += [f"--lncrnapy={flags.FLAGS.lncrnapy}",
             f"--lncrnapy_python={flags.FLAGS.lncrnapy_python}"]
  if _TINY.value is not None:
    args.append("--tiny" if _TINY.value else "--notiny")
  # The context search runs each of its tries in a process of its own, with this timeout.
  timeout = min(_STEP_TIMEOUT.value * LONG_STEPS.get(name, 1), time_left)
  try:
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
      stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
      proc.kill()
      stdout, stderr = proc.communicate()
      stderr += f"\ntimed out after {timeout} s"
  except OSError as e:
    emit({"step": name, "error": first_line(e)})
    return 1
  if _OUT.value:
    with open(_OUT.value + ".stderr", "a") as f:
      f.write(f"==== {name} (exit {proc.returncode})\n" + "\n".join(stderr.splitlines()[-300:]) + "\n")
  lines = [l for l in stdout.splitlines() if l.startswith("{")]
  for line in lines:
    emit(line)
  if not lines or proc.returncode and "error" not in json.loads(lines[-1]):
    emit({"step": name, "error": _last_error(stderr, proc.returncode)})
  return proc.returncode or (0 if lines else 1)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  unknown = [s for s in _ONLY.value if s not in STEP_FNS]
  if unknown:
    raise app.UsageError(f"unknown --only {', '.join(unknown)}: choose from {', '.join(STEPS)}")
  if _CHILD.value:
    sys.exit(run_child(_ONLY.value[0]))
  if _OUT.value:
    _sink.append(open(_OUT.value, "a"))  # noqa: SIM115 - held for the run
  start = time.perf_counter()
  failed = []
  for name in _ONLY.value:
    left = (_DEADLINE.value - (time.perf_counter() - start)) if _DEADLINE.value else math.inf
    if left < 5:
      emit({"step": name, "error": f"skipped: the --deadline_s {_DEADLINE.value} has passed"})
      failed.append(name)
    elif run_isolated(name, left) if isolated() else run_child(name):
      failed.append(name)
  emit({"step": "summary", "seconds": round(time.perf_counter() - start, 1), "failed": failed})
  sys.exit(1 if failed else 0)


if __name__ == "__main__":
  app.run(main)
