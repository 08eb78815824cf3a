"""The two halves of MFU: a compiled program's FLOPs and the peak of a device. MFU is
stated as the field states it, against the chip's dense peak from the vendor's page
(chip_peak); the matmul rate measured on the device (peak_flops) stands beside it as "of
measured peak", and replaces the chip's peak where the device kind is not in the table.
One measurement, shared by the training log and nlm_jax.bench, so their MFUs agree."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import time
from typing import Any

import jax
import jax.numpy as jnp


# Dense peaks (no 2:4 sparsity) by device kind as JAX names it: (pattern, chip, bf16 FLOP/s,
# float32 FLOP/s or None). NVIDIA's pages give tensor-core figures "with sparsity", twice
# the dense ones, hence the halves. JAX computes float32 dots in TF32 on these GPUs at its
# default precision, so their float32 peak is TF32's; TPUs compute float32 dots in bf16
# passes, so they have no float32 entry (the measured rate stands in). First match wins:
# the PCIe and NVL boards before the SXM one. (A GH200's GPU is no "H200": unknown here.)
CHIPS: tuple[tuple[str, str, float, float | None], ...] = (
    # https://www.nvidia.com/en-us/data-center/h100/ and the H100 PCIe product brief
    # (PB-11133): BF16 1,979 (SXM), 1,671 (NVL), 1,513 (PCIe) TFLOPS with sparsity; TF32
    # 989, 835, 756. "NVIDIA H100 80GB HBM3" is the SXM board.
    (r"\bH100\b.*PCIe", "H100 PCIe", 1513e12 / 2, 756e12 / 2),
    (r"\bH100\b.*NVL", "H100 NVL", 1671e12 / 2, 835e12 / 2),
    (r"\bH100\b", "H100 SXM", 1979e12 / 2, 989e12 / 2),
    # https://www.nvidia.com/en-us/data-center/h200/: H200 SXM as H100 SXM, H200 NVL 1,671.
    (r"\bH200\b.*NVL", "H200 NVL", 1671e12 / 2, 835e12 / 2),
    (r"\bH200\b", "H200 SXM", 1979e12 / 2, 989e12 / 2),
    # https://www.nvidia.com/en-us/data-center/a100/: BF16 312 TFLOPS dense (624 with
    # sparsity), TF32 156; the same on the SXM4 and PCIe boards, 40 and 80 GB.
    (r"\bA100\b", "A100", 312e12, 156e12),
    # https://www.nvidia.com/en-us/data-center/l4/: BF16 242, TF32 120 TFLOPS with sparsity.
    (r"\bL4$", "L4", 242e12 / 2, 120e12 / 2),
    # https://cloud.google.com/tpu/docs/v4, /v5e, /v5p, /v6e: peak compute per chip (bf16).
    (r"^TPU v4$", "TPU v4", 275e12, None),
    (r"^TPU v5 ?(lite|e)$", "TPU v5e", 197e12, None),
    (r"^TPU v5p?$", "TPU v5p", 459e12, None),
    (r"^TPU v6 ?(lite|e)$", "TPU v6e", 918e12, None),
)


def chip_peak(device_kind: str, dtype: Any) -> tuple[str, float] | None:
  """(chip, dense FLOP/s) of a device kind for matmuls in `dtype` (bfloat16 and float16
  share one peak), or None where the table has no figure."""
  name = str(dtype)
  for pattern, chip, bf16, fp32 in CHIPS:
    if re.search(pattern, device_kind):
      peak = bf16 if name in ("bfloat16", "float16") else fp32 if name == "float32" else None
      return (chip, peak) if peak else None
  return None


@dataclasses.dataclass(frozen=True)
class Peak:
  """The peak MFU is stated against: the chip's dense peak where the table knows the
  device kind, else the measured matmul rate (`chip` None then); `measured` is that rate."""
  flops_per_s: float
  measured: float
  chip: str | None
  dtype: str
  device_kind: str

  @classmethod
  def of(cls, device_kind: str, dtype: Any, measured: float) -> Peak:
    known = chip_peak(device_kind, dtype)
    return cls(known[1] if known else measured, measured, known and known[0], str(dtype),
               device_kind)

  def describe(self) -> str:
    """What MFU is against, for logs and JSON lines."""
    if self.chip:
      return f"{self.chip} {self.dtype} dense peak {self.flops_per_s / 1e12:.4g} TFLOP/s (vendor)"
    return (f"measured {self.dtype} matmul rate (no {self.dtype} peak known for device kind "
            f"{self.device_kind!r})")

  def fields(self, achieved: float) -> dict[str, Any]:
    """MFU of `achieved` FLOP/s against this peak, and of the measured matmul rate."""
    return {"mfu": achieved / self.flops_per_s, "peak_flops_per_s": self.flops_per_s,
            "peak_source": self.describe(), "measured_peak_flops_per_s": self.measured,
            "mfu_of_measured_peak": achieved / self.measured}


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
