"""lncRNA-Py side by side with nlm_jax, in one run: lncRNA-Py's own pre-training step
(nlm_jax/peer.py, in a process of its own under the Python that has PyTorch) and nlm_jax's
train step (nlm_jax.bench's train line) at the same configuration, on the same FASTA file;
one JSON line per batch size ("kind": "peer").

Sizes: on an accelerator BERT-base conv at lncRNA-Py's kernel 9 and context 768 (d_model
768, N 12, 768 kernels), batch 8 (its default) and 64, each program at its default
precision (nlm_jax bf16; lncRNA-Py float16 autocast with a GradScaler on CUDA), 3 warm-up
and 10 timed steps; on a CPU the small model of the bench's gencode_conv (d_model 64, N 2,
context 768), 1 + 3 steps (nlm_jax fp32, lncRNA-Py bfloat16 autocast, their CPU defaults);
tiny (the device check's CPU run, a test) d_model 16, N 1, context 64, batches 8 and 16.
At batch 8 nlm_jax also runs with --packing. lncRNA-Py runs first, every batch size, then
nlm_jax: on a GPU JAX takes most of its memory at its first allocation.

Fields: config, batch_size, context_length, d_model, N, kernel_size, data (gencode or
generated: bench.e2e_data's training file);
  nlm_jax, nlm_jax_packed (batch 8): step_s (step_s_pipelined: bench.py), samples_per_s,
    sequences_per_s, real_nucleotides_per_s, real_fraction, compute_dtype, n_params,
    sampler_vs_train, step_memory_bytes, and mfu: the model's FLOPs (model.train_flops, PaLM's count, the
    same for both programs) per second over the chip's dense peak (peak_source; the
    measured matmul rate where the chip is unknown), mfu_of_measured_peak beside it;
  lncrnapy: peer.py's line (step_s, samples_per_s, real_nucleotides_per_s, real_fraction
    of its steps over batches encoded beforehand; with_data: the same with its DataLoader
    encoding each batch in the loop, as its pre-training runs; amp, device, torch,
    n_params, peak_memory_bytes) and mfu, mfu_of_measured_peak as nlm_jax's, or
    {"error": ...} (out of memory: "fits": false);
  ratios, nlm_jax over lncRNA-Py: samples_per_s_ratio, real_nucleotides_per_s_ratio (over
    its step), samples_per_s_ratio_with_data (over its step with its data path), and at
    batch 8 real_nucleotides_per_s_ratio_packed, sequences_per_s_ratio_packed.
Without --lncrnapy, or where that checkout or its Python cannot run (no torch, no
biopython, not a checkout), one line {"kind": "peer", "error": ...} says so and nothing
is timed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from typing import Any, Callable, Iterator

from nlm_jax.config import Config

PEER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peer.py")
# (model, batch sizes, warm-up steps, timed steps) by where it runs.
BASE_K9 = dict(encoding_method="conv", d_model=768, N=12, n_kernels=768, kernel_size=9,
               context_length=768)
SIZES = {
    "accelerator": ("base_conv_k9", BASE_K9, (8, 64), 3, 10),
    "cpu": ("gencode_conv", dict(encoding_method="conv", d_model=64, N=2, h=4, n_kernels=64,
                                 kernel_size=9, context_length=768), (8, 64), 1, 3),
    "tiny": ("tiny_conv", dict(encoding_method="conv", d_model=16, N=1, h=2, n_kernels=16,
                               kernel_size=9, context_length=64), (8, 16), 1, 2),
}
NLM_KEYS = ("step_s", "step_s_pipelined", "train_samples_per_s", "sequences_per_s", "real_nucleotides_per_s",
            "real_fraction", "compute_dtype", "n_params", "peak_source", "sampler_vs_train",
            "step_memory_bytes")


def call_peer(python: str, lncrnapy: str, args: list[str], timeout: float) -> dict[str, Any]:
  """peer.py's JSON line, or {"error": ...} for a Python that cannot be run, a crash or
  a hang."""
  cmd = [python, PEER_SCRIPT, f"--lncrnapy={lncrnapy}", *args]
  try:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
  except OSError as e:
    return {"error": f"cannot run --lncrnapy_python {python!r} ({e.strerror or e})"}
  except subprocess.TimeoutExpired:
    return {"error": f"lncRNA-Py's step timed out after {timeout:.0f} s"}
  lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
  if lines:
    return json.loads(lines[-1])
  tail = [l for l in out.stderr.splitlines() if l.strip()]
  return {"error": f"{python} ended with exit {out.returncode}: {tail[-1][:300] if tail else ''}"}


def mfus(cfg: Config, n_params: int, step_s: float, peaks: dict[str, float]) -> dict[str, float]:
  """The model's FLOPs per second of a step of cfg's shape over each peak."""
  from nlm_jax import model as model_lib

  flops = model_lib.train_flops(cfg, n_params, cfg.batch_size)
  return {k: flops / step_s / peak for k, peak in peaks.items()}


def records(fastas: tuple[str, str, str], size: str, lncrnapy: str | None, python: str,
            train_record: Callable[[str, Config, int, int], dict[str, Any]],
            log: Callable[[str], None], timeout: float = 600) -> Iterator[dict[str, Any]]:
  """The peer lines of one run (see the module docstring). fastas: (train, valid, source)
  of bench.e2e_data; size: a key of SIZES; train_record: bench.train_record."""
  name, model, batches, warmup, steps = SIZES[size]
  if not lncrnapy:
    yield {"kind": "peer", "error": "no --lncrnapy: give lncRNA-Py's checkout (and "
                                    "--lncrnapy_python, the Python that has torch)"}
    return
  check = call_peer(python, lncrnapy, ["--check"], 120)
  if "error" in check:
    yield {"kind": "peer", "error": check["error"]}
    return
  if size == "accelerator" and check["device"] == "cpu":
    yield {"kind": "peer", "error": f"{python}'s torch sees no GPU (device cpu): give "
                                    "--lncrnapy_python a Python with a CUDA build of torch"}
    return
  log(f"peer: lncRNA-Py at {check['lncrnapy']} (torch {check['torch']}, {check['device']}), "
      f"{name}, batches {batches}")
  train, valid, source = fastas
  shape = ["--fasta", train, "--warmup", str(warmup), "--steps", str(steps)] + [
      f"--{k}={model[k]}" for k in ("d_model", "N", "n_kernels", "kernel_size", "context_length")]
  if "h" in model:
    shape.append(f"--h={model['h']}")
  peers = {}
  for batch in batches:  # before nlm_jax allocates the GPU's memory
    log(f"  lncRNA-Py, batch {batch}")
    peers[batch] = call_peer(python, lncrnapy, [*shape, f"--batch_size={batch}"], timeout)
  for batch in batches:
    cfg = Config(train, valid, **model, batch_size=batch).validate()
    runs = {"nlm_jax": cfg}
    if batch == 8:
      runs["nlm_jax_packed"] = dataclasses.replace(cfg, packing=True)
    line: dict[str, Any] = {"kind": "peer", "config": name, "batch_size": batch, "data": source,
                            **{k: model[k] for k in ("context_length", "d_model", "N", "kernel_size")}}
    peaks = {}
    for key, c in runs.items():
      log(f"  nlm_jax, batch {batch}{', packed' if c.packing else ''}")
      record = train_record(f"peer_{name}", c, warmup, steps)
      # One peak for every program of the line: the unpacked run's.
      peaks = peaks or {"mfu": record["peak_flops_per_s"],
                        "mfu_of_measured_peak": record["measured_peak_flops_per_s"]}
      line[key] = {k: record.get(k) for k in NLM_KEYS}
      line[key]["samples_per_s"] = line[key].pop("train_samples_per_s")
      line[key].update(mfus(cfg, record["n_params"], record["step_s"], peaks))
    nlm, peer = line["nlm_jax"], dict(peers[batch])
    if "error" not in peer:
      peer.update(mfus(cfg, peer["n_params"], peer["step_s"], peaks))
      line["samples_per_s_ratio"] = nlm["samples_per_s"] / peer["samples_per_s"]
      line["real_nucleotides_per_s_ratio"] = (nlm["real_nucleotides_per_s"]
                                              / peer["real_nucleotides_per_s"])
      line["samples_per_s_ratio_with_data"] = (nlm["samples_per_s"]
                                               / peer["with_data"]["samples_per_s"])
      if "nlm_jax_packed" in line:
        packed = line["nlm_jax_packed"]
        line["real_nucleotides_per_s_ratio_packed"] = (packed["real_nucleotides_per_s"]
                                                       / peer["real_nucleotides_per_s"])
        line["sequences_per_s_ratio_packed"] = packed["sequences_per_s"] / peer["samples_per_s"]
      log(f"  batch {batch}: nlm_jax {nlm['samples_per_s']:.1f} samples/s, lncRNA-Py "
          f"{peer['samples_per_s']:.1f} ({peer['with_data']['samples_per_s']:.1f} with its data "
          f"path): x{line['samples_per_s_ratio']:.2f}")
    line["lncrnapy"] = peer
    yield line
