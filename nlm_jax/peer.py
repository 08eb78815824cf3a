r"""lncRNA-Py's own pre-training step, timed, for nlm_jax.bench_peer to set beside nlm_jax's.

  PYTHON nlm_jax/peer.py --lncrnapy DIR --check
  PYTHON nlm_jax/peer.py --lncrnapy DIR --fasta F --batch_size 8 --warmup 3 --steps 10 ...

Run as a script by the Python that has PyTorch (--lncrnapy_python of the bench and the
device check), in a process of its own: it imports nothing of nlm_jax and no JAX, and
lncRNA-Py (MIT-licensed) from its checkout DIR, which it calls and never copies. It builds
CSEBERT and MaskedConvModel as lncrnapy.scripts.pretrain does, reads the FASTA with its
Data class (4D-DNA of (context_length - 1) * kernel_size columns, the random reading frame
its MCM training sets) and runs its epoch function (masking, autocast with float16 and a
GradScaler on CUDA or bfloat16 on CPU, gradient clipping, Adam, the learning-rate
schedule) twice over warm-up + timed batches: over batches drawn beforehand ("its step")
and over its DataLoader, which encodes every batch in this process as its pre-training
does ("with_data"). Prints one JSON line on stdout; lncRNA-Py's own prints go to stderr.
--check only imports it and says which torch and device it found.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import sys
import time
from typing import Any, Callable, Iterable, Iterator


def fail(message: str) -> None:
  print(json.dumps({"error": message}), file=sys.__stdout__, flush=True)
  sys.exit(1)


def first_line(e: BaseException) -> str:
  lines = [l for l in str(e).splitlines() if l.strip()]
  return f"{type(e).__name__}: {lines[0][:300] if lines else ''}"


def import_lncrnapy(folder: str) -> dict[str, Any]:
  """lncRNA-Py's modules from the checkout `folder`, or a one-line failure naming what is
  missing (no torch in this Python, no checkout there, a package it imports)."""
  if not os.path.isfile(os.path.join(folder, "lncrnapy", "modules", "bert.py")):
    fail(f"--lncrnapy {folder!r} holds no lncRNA-Py checkout (no lncrnapy/modules/bert.py): give "
         "the folder that holds the lncrnapy package")
  try:
    import torch
  except ImportError:
    fail(f"{sys.executable} has no PyTorch: give --lncrnapy_python a Python that has torch")
  sys.path.insert(0, os.path.abspath(folder))
  try:
    from lncrnapy import utils
    from lncrnapy.data import Data
    from lncrnapy.modules import CSEBERT, MaskedConvModel
    from lncrnapy.train import masked_conv_modeling
    from lncrnapy.train.lr_schedule import LrSchedule
    from lncrnapy.train.mixed_precision import get_amp_args, get_gradient_scaler
  except ImportError as e:
    missing = getattr(e, "name", None)
    hint = " (biopython: pip install biopython)" if missing == "Bio" else ""
    fail(f"lncRNA-Py's imports failed in {sys.executable}: {first_line(e)}{hint}")
  return dict(torch=torch, utils=utils, Data=Data, CSEBERT=CSEBERT,
              MaskedConvModel=MaskedConvModel, mcm=masked_conv_modeling, LrSchedule=LrSchedule,
              get_amp_args=get_amp_args, get_gradient_scaler=get_gradient_scaler)


class Timed:
  """Batches for lncRNA-Py's epoch loop; each request for the next one marks the end of
  the previous step (after the device finished it), so mark i to i + 1 is batch i's
  fetching and step. `real` counts the real nucleotides of each batch handed out."""

  def __init__(self, batches: Iterable[Any], sync: Callable[[], None], count: Callable[[Any], int]):
    self.batches, self.sync, self.count = batches, sync, count
    self.marks: list[float] = []
    self.real: list[int] = []

  def __iter__(self) -> Iterator[Any]:
    self.sync()
    self.marks.append(time.perf_counter())
    for batch in self.batches:
      self.real.append(self.count(batch[0]))
      yield batch
      self.sync()
      self.marks.append(time.perf_counter())


def figures(timed: Timed, batch_size: int) -> dict[str, Any]:
  """Median step seconds, samples/s and real nt/s of the steps timed."""
  times = [b - a for a, b in zip(timed.marks, timed.marks[1:])]
  real = timed.real
  step_s = statistics.median(times)
  return {"step_s": step_s, "step_s_all": times, "samples_per_s": batch_size / step_s,
          "real_nucleotides_per_s": statistics.mean(real) / step_s}


def run(args: argparse.Namespace, lib: dict[str, Any]) -> dict[str, Any]:
  torch, utils, mcm = lib["torch"], lib["utils"], lib["mcm"]
  random.seed(0)  # Data's reading frames
  torch.manual_seed(0)
  device = utils.DEVICE
  cuda = device.type == "cuda"
  sync = torch.cuda.synchronize if cuda else (lambda: None)
  len_4d_dna = (args.context_length - 1) * args.kernel_size

  data = lib["Data"](args.fasta)
  data.set_tensor_features("4D-DNA", len_4d_dna=len_4d_dna)
  data.set_random_reading_frame(args.kernel_size - 1)  # as its MCM training does
  base = lib["CSEBERT"](args.n_kernels, args.kernel_size, args.d_model, args.N, None, args.h)
  model = lib["MaskedConvModel"](base.config, base, 0.0, pred_batch_size=args.batch_size).to(device)
  loss_function = torch.nn.CrossEntropyLoss(ignore_index=-1)
  optimizer = torch.optim.Adam(model.parameters(), lr=1, betas=(0.9, 0.98))
  schedule = lib["LrSchedule"](optimizer, args.d_model, args.warmup_steps)
  scaler = lib["get_gradient_scaler"](device)
  loader = lambda n: torch.utils.data.DataLoader(
      data, args.batch_size,
      sampler=torch.utils.data.RandomSampler(data, num_samples=n * args.batch_size))
  count = lambda x: int((x.sum(dim=1) > 0).sum().item())

  def epoch(batches: Iterable[Any]) -> Timed:
    timed = Timed(batches, sync, count)
    mcm.epoch(model, timed, args.p_mlm, 0.8, 0.1, 1, loss_function, optimizer, scaler, schedule)
    return timed

  epoch(loader(args.warmup))  # warm-up: kernels chosen, memory pools grown
  drawn = list(loader(args.steps))  # its step alone: the batches encoded beforehand
  step = figures(epoch(drawn), args.batch_size)
  with_data = figures(epoch(loader(args.steps)), args.batch_size)
  amp = lib["get_amp_args"](device)
  return {
      "device": torch.cuda.get_device_name(device) if cuda else "cpu",
      "torch": torch.__version__, "lncrnapy": os.path.abspath(args.lncrnapy),
      "amp": f"{str(amp['dtype']).replace('torch.', '')} autocast"
             + (", GradScaler" if cuda else ""),
      "n_params": sum(p.numel() for p in model.parameters()),
      **step, "real_fraction": statistics.mean(count(x) for x, _ in drawn) / (args.batch_size * len_4d_dna),
      "with_data": with_data,
      "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if cuda else None}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--lncrnapy", required=True, help="lncRNA-Py's checkout (holds lncrnapy/)")
  p.add_argument("--check", action="store_true", help="only import it; say what was found")
  p.add_argument("--fasta")
  for name, default in (("batch_size", 8), ("warmup", 3), ("steps", 10), ("d_model", 768),
                        ("N", 12), ("h", None), ("n_kernels", 768), ("kernel_size", 9),
                        ("context_length", 768), ("warmup_steps", 32000)):
    p.add_argument(f"--{name}", type=int, default=default)
  p.add_argument("--p_mlm", type=float, default=0.15)
  args = p.parse_args()
  with contextlib.redirect_stdout(sys.stderr):  # lncRNA-Py prints its progress
    lib = import_lncrnapy(args.lncrnapy)
    torch = lib["torch"]
    if args.check:
      record = {"ok": True, "torch": torch.__version__, "device": str(lib["utils"].DEVICE),
                "lncrnapy": os.path.abspath(args.lncrnapy)}
    else:
      try:
        record = run(args, lib)
      except Exception as e:  # noqa: BLE001 - out of memory (or any failure) is its answer
        oom = isinstance(e, getattr(torch.cuda, "OutOfMemoryError", ())) or "out of memory" in str(e)
        record = {"fits": False} if oom else {}
        record["error"] = first_line(e)
  print(json.dumps(record), file=sys.__stdout__, flush=True)
  sys.exit(0 if "error" not in record else 1)


if __name__ == "__main__":
  main()
