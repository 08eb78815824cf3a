r"""The FASTA benchmark of nlm_jax.bench (--configs=fasta): what a large FASTA file costs at
the first open and at every later one, beside pyfastx's own index build, and what it
costs the pre-training command.

  .venv/bin/python -m nlm_jax.bench --configs=fasta --fasta_gb=4 --bench_dir=/tmp/nlm_bench

The data: a generated file of RNAcentral-like records (--fasta_gb GB; lengths log-normal
through a median of 180 nt, 20 nt to 20 kb; headers "URS..._9606 description"; lines of
60 nt), its first --fasta_gzip_gb GB gzipped (level 1), and a small file: GENCODE's
lncRNAs (the shared data folder, when present) or a generated 4 MB file. Every
measurement runs in a fresh process, forked once more from a bare interpreter so that
its resource usage (getrusage) is its own. One JSON line, "kind": "fasta":

  file_bytes, n_sequences, generate_s: the plain file, and the seconds to write it (0
    when --bench_dir held it already).
  pyfastx_build: pyfastx.Fasta(build_index=True) into a new index file: wall_s, cpu_s
    (user + system), max_rss_bytes, index_bytes. The anchor of the first open.
  first_open, later_open: nlm_jax.fasta.Fasta on a new index folder, then on the index it
    built: wall_s, cpu_s, rss_before_bytes (the interpreter and its imports),
    rss_after_bytes (resident memory right after opening), max_rss_bytes, n_sequences.
  index_bytes: the index folder on disk; first_open_vs_pyfastx_cpu: the ratio of CPU
    seconds.
  sampling: TrainSampler batches at the contract's defaults (conv, 768 positions, batch
    8), --stream_s seconds from the large file and as long from the small one, in turns,
    in one process: big_rows_per_s, small_rows_per_s, big_vs_small,
    rss_after_sampling_bytes (after both), max_rss_bytes.
  pretrain: the pre-training command (a tiny model, one epoch of 2 steps) on the large
    file and on the small one (validating on the small one; the large file indexed, the
    compilation cache warm): startup_s of each (from the process's start to its first
    training step), startup_big_minus_small_s, max_rss_bytes of each.
  gzip (with --fasta_gzip_gb > 0): gz_bytes, first_open and later_open as above, the
    sampling rate, and the pre-training command on it (startup_s, max_rss_bytes).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
import zlib
from typing import Any, Callable

import numpy as np

from nlm_jax import fasta as fasta_lib
from nlm_jax import filecache
from nlm_jax import sampler as sampler_lib
from nlm_jax.config import Config

PRETRAIN_FLAGS = ("--d_model=32", "--N=1", "--h=2", "--n_kernels=32", "--kernel_size=9",
                  "--context_length=64", "--batch_size=8", "--epochs=1",
                  "--n_samples_per_epoch=16", "--n_eval=64", "--seed=0")


def write_ncrna_fasta(path: str, n_bytes: int, seed: int = 0, line: int = 60) -> int:
  """At least n_bytes of RNAcentral-like records (module docstring), written to path.tmp
  then renamed; returns the record count."""
  rng = np.random.default_rng(seed)
  letters = np.frombuffer(b"ACGT", dtype=np.uint8)
  written = i = 0
  with open(path + ".tmp", "wb", buffering=1 << 24) as f:
    while written < n_bytes:
      lengths = np.clip(rng.lognormal(np.log(180), 1.0, 4096), 20, 20_000).astype(np.int64)
      seqs = letters[rng.integers(0, 4, int(lengths.sum()), dtype=np.uint8)].tobytes()
      parts, start = [], 0
      for n in lengths.tolist():
        seq = seqs[start:start + n]
        start += n
        parts.append(b">URS%010X_9606 Homo sapiens small RNA %d\n" % (i, n))
        parts.append(b"\n".join(seq[j:j + line] for j in range(0, n, line)) + b"\n")
        i += 1
      block = b"".join(parts)
      f.write(block)
      written += len(block)
  os.replace(path + ".tmp", path)
  return i


def gzip_prefix(src: str, dst: str, n_bytes: int) -> None:
  """The first whole records of src that fill n_bytes, gzipped at level 1, to dst."""
  coder = zlib.compressobj(1, zlib.DEFLATED, 31)  # wbits 31: the gzip format
  with open(src, "rb") as f, open(dst + ".tmp", "wb") as out:
    done = 0
    while done < n_bytes and (data := f.read(1 << 24)):
      if done + len(data) >= n_bytes:  # end before the next record
        cut = data.find(b"\n>", n_bytes - done)
        data = data if cut < 0 else data[:cut + 1]
      out.write(coder.compress(data))
      done += len(data)
    out.write(coder.flush())
  os.replace(dst + ".tmp", dst)


def _rss() -> int:
  """This process's resident memory now (VmRSS), in bytes."""
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _usage() -> tuple[float, int]:
  """(CPU seconds so far, peak resident bytes) of this process."""
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime, r.ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def _rows_per_s(sources: list[fasta_lib.Fasta], cfg: Config, seconds: float,
                rounds: int = 10) -> list[float]:
  """TrainSampler rows per second from each source, timed in turns (seconds / rounds each),
  so that a drift of the machine's speed weighs on all alike."""
  samplers = [sampler_lib.TrainSampler(fa, cfg, sampler_lib.encoding_for(cfg)) for fa in sources]
  for sampler in samplers:
    sampler.batch(0, 0)  # the epoch's order
  rows, spent, done = [0] * len(sources), [0.0] * len(sources), [0] * len(sources)
  for _ in range(rounds):
    for i, sampler in enumerate(samplers):
      t0 = time.perf_counter()
      while time.perf_counter() - t0 < seconds / rounds:
        epoch, step = divmod(done[i], sampler.steps_per_epoch)
        rows[i] += len(sampler.batch(epoch, step)["inputs"])
        done[i] += 1
      spent[i] += time.perf_counter() - t0
  return [r / s for r, s in zip(rows, spent)]


def child(task: str, path: str, index: str, small: str, seconds: float) -> dict[str, Any]:
  """One measurement (module docstring), in the process that reports it."""
  cpu0, _ = _usage()
  rss_before, t0 = _rss(), time.perf_counter()
  out: dict[str, Any] = {}
  if task == "pyfastx":
    import pyfastx  # the anchor only

    out["n_sequences"] = len(pyfastx.Fasta(path, index_file=index, build_index=True))
    out["index_bytes"] = os.path.getsize(index)
  else:
    filecache.use_folder(index)
    fa = fasta_lib.Fasta(path)
    out["n_sequences"] = len(fa)
  out["wall_s"] = time.perf_counter() - t0
  out["rss_before_bytes"], out["rss_after_bytes"] = rss_before, _rss()
  out["cpu_s"] = _usage()[0] - cpu0
  if task == "sample":
    cfg = Config(path, path).validate()  # the contract's defaults
    big, small_rate = _rows_per_s([fa, fasta_lib.Fasta(small)], cfg, seconds)
    out.update(big_rows_per_s=big, small_rows_per_s=small_rate, big_vs_small=big / small_rate,
               rss_after_sampling_bytes=_rss())
  out["max_rss_bytes"] = _usage()[1]
  return out


# A child of a process that holds much memory (JAX) starts with that process's peak in its
# ru_maxrss: the child forks once more, from a bare interpreter, to measure.
_CHILD = """
import json, os, sys, traceback
from nlm_jax import bench_fasta
pid = os.fork()
if pid == 0:
  code = 0
  try:
    print(json.dumps(bench_fasta.child(*sys.argv[1:5], float(sys.argv[5]))), flush=True)
  except BaseException:
    traceback.print_exc()
    code = 1
  sys.stderr.flush()
  os._exit(code)
sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


def measure(task: str, path: str, index: str, small: str = "", seconds: float = 0.0
            ) -> dict[str, Any]:
  out = subprocess.run([sys.executable, "-c", _CHILD, task, path, index, small, str(seconds)],
                       capture_output=True, text=True, check=False)
  if out.returncode:
    raise RuntimeError(f"the FASTA measurement {task} failed:\n{out.stderr[-3000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])


def folder_bytes(folder: str) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)


def pretrain(train: str, valid: str, index: str, run_dir: str, cache: str,
             run: Callable[[list[str]], dict[str, Any]]) -> dict[str, Any]:
  """The pre-training command (PRETRAIN_FLAGS) by run(arguments) (bench.pretrain_startup):
  start-up seconds and peak memory."""
  shutil.rmtree(run_dir, ignore_errors=True)
  return run([train, valid, *PRETRAIN_FLAGS, f"--model_dir={run_dir}/models",
              f"--results_dir={run_dir}/results", f"--compilation_cache={cache}",
              f"--fasta_index={index}"])


def record(folder: str, gb: float, gzip_gb: float, seconds: float, small: str | None,
           log: Callable[[str], None], run: Callable[[list[str]], dict[str, Any]]) -> dict[str, Any]:
  """The "fasta" line (module docstring); run(arguments) runs the pre-training command."""
  path = os.path.join(folder, f"ncrna_{gb:g}GB.fasta")
  generate_s = 0.0
  if not os.path.exists(path):
    log(f"writing {gb:g} GB of RNAcentral-like records to {path}")
    t0 = time.perf_counter()
    write_ncrna_fasta(path, int(gb * 1e9))
    generate_s = time.perf_counter() - t0
  if small is None:
    small = os.path.join(folder, "small_4MB.fasta")
    if not os.path.exists(small):
      write_ncrna_fasta(small, 4_000_000, seed=1)
  index = os.path.join(folder, "index")
  shutil.rmtree(index, ignore_errors=True)
  rec: dict[str, Any] = {"kind": "fasta", "config": "fasta", "file_bytes": os.path.getsize(path),
                         "generate_s": generate_s, "small": small}
  log("pyfastx's index build (the anchor)")
  fxi = os.path.join(folder, "pyfastx.fxi")
  for stale in (fxi, fxi + "-journal"):
    if os.path.exists(stale):
      os.remove(stale)
  rec["pyfastx_build"] = measure("pyfastx", path, fxi)
  os.remove(fxi)
  log("nlm_jax's first open, later open, sampling")
  rec["first_open"] = measure("open", path, index)
  rec["n_sequences"] = rec["first_open"]["n_sequences"]
  rec["later_open"] = measure("open", path, index)
  rec["index_bytes"] = folder_bytes(index)
  rec["first_open_vs_pyfastx_cpu"] = rec["first_open"]["cpu_s"] / rec["pyfastx_build"]["cpu_s"]
  rec["sampling"] = measure("sample", path, index, small, seconds)
  log("the pre-training command on the small file, then on the large one")
  cache = os.path.join(folder, "xla")
  shutil.rmtree(cache, ignore_errors=True)
  runs = os.path.join(folder, "runs")
  pretrain(small, small, index, runs, cache, run)  # fills the compilation cache
  small_run = pretrain(small, small, index, runs, cache, run)
  big_run = pretrain(path, small, index, runs, cache, run)
  rec["pretrain"] = {"small": small_run, "big": big_run,
                     "startup_big_minus_small_s": big_run["startup_s"] - small_run["startup_s"]}
  if gzip_gb > 0:
    gz = os.path.join(folder, f"ncrna_{gzip_gb:g}GB.fasta.gz")
    if not os.path.exists(gz):
      log(f"gzipping the first {gzip_gb:g} GB to {gz}")
      gzip_prefix(path, gz, int(gzip_gb * 1e9))
    log("the gzipped file: first open, later open, sampling, pre-training")
    first = measure("open", gz, index)
    rec["gzip"] = {"gz_bytes": os.path.getsize(gz), "first_open": first,
                   "later_open": measure("open", gz, index),
                   "sampling": measure("sample", gz, index, small, seconds),
                   "pretrain": pretrain(gz, small, index, runs, cache, run)}
  shutil.rmtree(runs, ignore_errors=True)
  return rec
