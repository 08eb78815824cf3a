"""python -m nlm_jax.bench end to end: the demo configuration, the e2e command and the FASTA
configuration at tiny sizes."""

import json
import math
import os
import subprocess
import sys

TRAIN_KEYS = {
    "kind", "config", "encoding_method", "d_model", "N", "context_length", "batch_size",
    "batch_size_requested", "n_params", "devices", "precision", "remat", "compute_dtype", "compile_s",
    "step_memory_bytes", "warmup_steps", "timed_steps", "step_s", "step_s_all", "step_s_pipelined",
    "train_samples_per_s", "nucleotides_per_sample", "train_nucleotides_per_s",
    "flops_per_step", "flops_source", "flops_per_step_6nd", "achieved_flops_per_s",
    "peak_flops_per_s", "peak_matmul_n", "peak_matmul_iters", "peak_dtype", "mfu",
    "peak_source", "measured_peak_flops_per_s", "mfu_of_measured_peak",
    "host_load_1m", "allocator", "sampler_samples_per_s", "sampler_vs_train", "packing",
    "real_fraction", "real_nucleotides_per_s", "sequences_per_s", "mfu_real"}
E2E_KEYS = {
    "kind", "config", "data", "n_train", "n_valid", "flags", "allocator", "devices",
    "compilation_cache", "compiled_from_cache", "wall_s", "user_s", "sys_s", "minor_faults", "max_rss_bytes",
    "startup_s", "train_s", "eval_s", "other_s", "exit_s", "train_real_nucleotides_per_s",
    "accuracy_valid", "host_load_1m"}
# The e2e command at a tiny size: one epoch of two steps.
TINY_E2E = ("--epochs=1,--n_samples_per_epoch=16,--d_model=16,--n_kernels=16,--N=1,--h=2,"
            "--context_length=16,--kernel_size=3,--n_eval=64")
FASTA_KEYS = {
    "kind", "config", "file_bytes", "generate_s", "small", "n_sequences", "pyfastx_build",
    "first_open", "later_open", "index_bytes", "first_open_vs_pyfastx_cpu", "sampling",
    "pretrain", "gzip"}
OPEN_KEYS = {"wall_s", "cpu_s", "rss_before_bytes", "rss_after_bytes", "max_rss_bytes", "n_sequences"}


def numbers(value):
  """Every number in a JSON value (booleans excluded), depth first."""
  if isinstance(value, bool):
    return []
  if isinstance(value, (int, float)):
    return [value]
  if isinstance(value, dict):
    return [n for v in value.values() for n in numbers(v)]
  if isinstance(value, list):
    return [n for v in value for n in numbers(v)]
  return []


def test_bench_demo(tmp_path):
  # One CPU device, as a user runs it: not the eight fake devices of conftest.py.
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["JAX_PLATFORMS"] = "cpu"
  out = subprocess.run(
      [sys.executable, "-m", "nlm_jax.bench", "--configs=demo_conv,e2e", "--steps=2", "--warmup=1",
       "--sampler_s=0.3", "--peak_n=1024",
       f"--bench_dir={tmp_path}", f"--e2e_flags={TINY_E2E}"],
      capture_output=True, text=True, env=env, timeout=300, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  lines = out.stdout.strip().splitlines()
  assert len(lines) == 3, out.stdout
  train, cold, warm = (json.loads(line) for line in lines)

  assert set(train) == TRAIN_KEYS
  assert train["kind"] == "train" and train["config"] == "demo_conv"
  assert train["devices"]["count"] == 1 and train["devices"]["platform"] == "cpu"
  assert train["timed_steps"] == 2 and len(train["step_s_all"]) == 2
  assert train["compute_dtype"] == "float32"
  assert train["nucleotides_per_sample"] == 63 * 9
  assert 0 < train["mfu"] < 1.5
  # No CPU is in the table of chip peaks: MFU is against the measured rate, and says so.
  assert train["mfu"] == train["mfu_of_measured_peak"]
  assert train.pop("peak_source").startswith("measured float32 matmul rate")
  if sys.platform == "linux":
    assert train.pop("allocator") == "malloc: mimalloc"

  assert train.pop("packing") is False and 0 < train["real_fraction"] <= 1
  assert train.pop("host_load_1m") >= 0  # 0 on an idle machine
  for x in numbers(train):
    assert math.isfinite(x) and x > 0, train
  assert "[bench]" in out.stderr  # progress for people goes to stderr

  for record, cache in ((cold, "cold"), (warm, "warm")):
    assert set(record) == E2E_KEYS
    assert record["kind"] == "e2e" and record["compilation_cache"] == cache
    assert record["compiled_from_cache"] == (cache == "warm")
    assert record["n_train"] == 2186 and record["n_valid"] == 500
    assert record["flags"].endswith(TINY_E2E.replace(",", " "))
    parts = [record[k] for k in ("startup_s", "train_s", "eval_s", "other_s", "exit_s")]
    assert min(parts) >= 0 and math.isclose(sum(parts), record["wall_s"], rel_tol=1e-6)
    assert record["user_s"] > 0 and record["minor_faults"] > 0 and record["max_rss_bytes"] > 0
    assert 0 < record["accuracy_valid"] < 1 and record["train_real_nucleotides_per_s"] > 0
    # Without XLA_FLAGS the command chooses its CPU devices (train.cpu_device_count).
    assert record["devices"] == "1 cpu"  # the tiny e2e's steps are too small to split
    if sys.platform == "linux":
      assert record["allocator"] == "malloc: mimalloc"


def test_bench_fasta(tmp_path):
  """The FASTA configuration: a 5 MB generated file and its first 2 MB gzipped, opened,
  sampled and pre-trained on (bench_fasta.py)."""
  out = subprocess.run(
      [sys.executable, "-m", "nlm_jax.bench", "--configs=fasta", "--fasta_gb=0.005",
       "--fasta_gzip_gb=0.002", "--stream_s=0.2", f"--bench_dir={tmp_path}"],
      capture_output=True, text=True, timeout=300, check=False,
      env={k: v for k, v in os.environ.items() if k != "XLA_FLAGS"})
  assert out.returncode == 0, out.stderr[-3000:]
  (line,) = out.stdout.strip().splitlines()
  record = json.loads(line)
  assert set(record) == FASTA_KEYS and record["kind"] == "fasta"
  assert record["file_bytes"] >= 0.005e9 and record["n_sequences"] > 10_000
  for opened in (record["first_open"], record["later_open"], record["gzip"]["first_open"],
                 record["gzip"]["later_open"]):
    assert set(opened) == OPEN_KEYS
    assert opened["rss_before_bytes"] <= opened["max_rss_bytes"]
  assert record["pyfastx_build"]["n_sequences"] == record["n_sequences"]
  assert record["index_bytes"] > 28 * record["n_sequences"]  # lengths, places, names: 36 bytes
  sampling = record["sampling"]
  assert math.isclose(sampling["big_vs_small"], sampling["big_rows_per_s"] / sampling["small_rows_per_s"])
  pretrain = record["pretrain"]
  assert math.isclose(pretrain["startup_big_minus_small_s"],
                      pretrain["big"]["startup_s"] - pretrain["small"]["startup_s"])
  assert record["gzip"]["gz_bytes"] < 0.002e9 and record["gzip"]["pretrain"]["startup_s"] > 0
  for x in numbers(record):
    assert math.isfinite(x), record
  assert "pyfastx" in out.stderr  # progress for people goes to stderr
