"""launch/device_check.sh, the one prepared accelerator check, run as on a machine without
an accelerator: the same steps at tiny sizes (about a minute on 2 quiet CPU cores)."""

import json
import os
import subprocess

import pytest

from nlm_jax import device_check

ROOT = os.path.join(os.path.dirname(__file__), "..")


@pytest.mark.slow  # about 20 small compilations: a minute or more on 2 CPU cores
def test_device_check_runs_every_step_at_tiny_sizes(tmp_path):
  # Compiling takes most of the time at tiny sizes: without LLVM's optimisation (as in
  # test_multihost.py) the check takes 40% less, and none of the figures below depends on it.
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {
      "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_backend_optimization_level=0"}
  out = subprocess.run(["bash", os.path.join(ROOT, "launch", "device_check.sh"), str(tmp_path)],
                       capture_output=True, text=True, env=env, timeout=600, check=False)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  lines = [json.loads(l) for l in out.stdout.splitlines()]
  with open(tmp_path / "device_check.jsonl") as f:
    assert [json.loads(l) for l in f] == lines  # the file holds what was printed
  by_step = {}
  for record in lines:
    by_step.setdefault(record["step"], []).append(record)
  assert list(by_step) == list(device_check.STEPS) + ["summary"]
  assert by_step["summary"][0]["failed"] == []
  assert by_step["env"][0]["backend"] == "cpu" and by_step["env"][0]["tiny"] is True
  for attention, packed in zip(by_step["attention"], (False, True), strict=True):
    assert attention["ok"] and not attention["fused_cudnn"]  # XLA's path here
    assert 0 < attention["forward_rel_err"] < 2e-2  # bf16 against float32: close, not equal
    assert attention["packed"] is packed
  step = by_step["bf16_step"][0]
  assert step["ok"] and step["finite"] and step["loss_rel_diff"] > 0
  for name in ("bench_conv", "bench_kmer"):
    records = by_step[name]
    assert [r["batch_size"] for r in records] == [8, 16], records
    assert all(r["fits"] and 0 < r["mfu"] < 1.5 and r["compute_dtype"] == "bfloat16"
               and r["mfu"] == r["mfu_of_measured_peak"] for r in records)  # no CPU peak known
  # lncRNA-Py side by side is opt-in (tests/test_bench_peer.py runs it).
  assert "no --lncrnapy DIR" in by_step["peer"][0]["skipped"]
  epoch = by_step["epoch"][0]
  assert epoch["steps"] == 50 and epoch["eval_rows"] == 8  # 400 samples, batch 8; CPU
  parts = [epoch[k] for k in ("train_s", "eval_s", "checkpoint_s", "report_s")]
  assert min(parts) >= 0 and epoch["train_s"] > 0
  # The log gives each part to 0.1 s (at tiny sizes, the steps take about that): the share
  # lies within what those roundings allow, plus the log's own rounding of it.
  train_s, epoch_s = epoch["train_s"], epoch["epoch_s"]
  low = 1 - (train_s + 0.05) / max(epoch_s - 0.2, 1e-9) - 0.01
  high = 1 - max(train_s - 0.05, 0) / (epoch_s + 0.2) + 0.01
  assert low <= epoch["outside_steps_share"] <= high, epoch
  dropout = by_step["dropout"][0]
  assert set(dropout["step_s"]) == {"threefry2x32", "rbg", "unsafe_rbg", "no_dropout"}
  assert dropout["vs_threefry"]["threefry2x32"] == 1 and min(dropout["step_s"].values()) > 0
  plain, packed, compared = by_step["bench_packed"]
  assert not plain["packing"] and packed["packing"] and compared["kind"] == "packing"
  assert packed["real_fraction"] > plain["real_fraction"]
  # A ratio of two timings, not a speed to assert: on a loaded machine either step can be slower.
  assert compared["real_nucleotides_per_s_ratio"] == pytest.approx(
      packed["real_nucleotides_per_s"] / plain["real_nucleotides_per_s"])
  *tries, answer = by_step["longest_context"]
  assert tries[0]["trains"] and tries[0]["finite"] and tries[-1]["attention"] == "xla"
  assert answer["longest_context"] == 128 and "--context_length=128" in answer["flags"]
  demo = by_step["demo"][0]
  assert demo["epochs"] == 1 and 0 <= demo["Accuracy|valid"] <= 1 and demo["wall_s"] > 0
  embed = by_step["embed"][0]
  assert embed["finite"] and embed["nucleotides_per_s"] > 0


def test_a_failing_step_is_one_json_line(monkeypatch, capsys):
  def broken():
    yield {"before": 1}
    raise RuntimeError("the kernel refused\nmore detail")

  monkeypatch.setitem(device_check.STEP_FNS, "env", broken)
  assert device_check.run_child("env") == 1
  first, error = (json.loads(l) for l in capsys.readouterr().out.splitlines())
  assert first["step"] == "env" and first["before"] == 1
  assert error["step"] == "env" and error["error"] == "RuntimeError: the kernel refused"
