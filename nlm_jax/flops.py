"""The two halves of MFU: a compiled program's FLOPs and the matmul peak of a device.
One measurement, shared by the training log and nlm_jax.bench, so their MFUs agree."""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp


def cost_flops(compiled: Any) -> float | None:
  """FLOPs of one call of a compiled program (one device's share) from XLA's cost model:
  a dict, or a list of dicts (older JAX); None where the backend gives none."""
  try:
    analysis = compiled.cost_analysis()
  except Exception:  # not implemented on some backends
    return None
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  if not analysis or "flops" not in analysis:
    return None
  flops = float(analysis["flops"])
  return flops if flops > 0 and math.isfinite(flops) else None


def peak_flops(dtype: Any, n: int | None = None, device: jax.Device | None = None,
               repeats: int = 5) -> tuple[float, int]:
  """Best of `repeats` FLOP/s of a jitted chain of n x n matmuls in `dtype` on one device
  (a fori_loop whose every product feeds the next, so none can be hoisted): the practical
  peak. n defaults to 1024 on CPU (2048 gave the same peak on 2 cores, in 4 times the
  time: 0.5 s of every first run), 8192 elsewhere. Returns (FLOP/s, matmuls per chain)."""
  device = device or jax.devices()[0]
  on_cpu = device.platform == "cpu"
  n = n or (1024 if on_cpu else 8192)
  iters = 8 if on_cpu else 50
  dt = jnp.dtype(dtype)
  a_NxN = jax.device_put(jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dt), device)
  b_NxN = jax.device_put(
      (jax.random.normal(jax.random.key(1), (n, n), jnp.float32) / math.sqrt(n)).astype(dt), device)
  chain = jax.jit(lambda a, b: jax.lax.fori_loop(0, iters, lambda _, c: c @ b, a))
  jax.block_until_ready(chain(a_NxN, b_NxN))  # compile and warm up
  best = math.inf
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(chain(a_NxN, b_NxN))
    best = min(best, time.perf_counter() - t0)
  return 2 * n ** 3 * iters / best, iters


def cached_peak_flops(dtype: Any, device: jax.Device, folder: str | None) -> tuple[float, bool]:
  """peak_flops(dtype, device=device, repeats=2), measured once per JAX version, device
  kind, dtype and core count and kept in folder/peak_flops.json (the compilation cache's
  folder: start-up skips the measurement, 0.1-0.4 s). folder None: measured every time.
  Returns (FLOP/s, whether it came from the file)."""
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  key = f"jax {jax.__version__} {device.platform} {device.device_kind} {jnp.dtype(dtype)} {cores} cores"
  path = folder and os.path.join(folder, "peak_flops.json")
  known: dict[str, float] = {}
  if path and os.path.exists(path):
    try:
      with open(path) as f:
        known = json.load(f)
    except (OSError, ValueError):
      known = {}
  if isinstance(known.get(key), float):
    return known[key], True
  peak, _ = peak_flops(dtype, device=device, repeats=2)
  if path:
    try:  # written whole, then renamed: a concurrent reader sees the old file or the new
      tmp = f"{path}.{os.getpid()}.tmp"
      with open(tmp, "w") as f:
        json.dump({**known, key: peak}, f, indent=1)
      os.replace(tmp, path)
    except OSError:
      pass
  return peak, False
