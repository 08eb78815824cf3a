"""lncRNA-Py's own pre-training step beside nlm_jax's (bench_peer.py, peer.py): the device
check's peer step at tiny sizes against lncRNA-Py's code (skipped without it), and every
way the peer can be missing as one line."""

import json
import os
import subprocess
import sys

import pytest

from conftest import peer_paths

ROOT = os.path.join(os.path.dirname(__file__), "..")
# As test_device_check.py: CPU, compiled without LLVM's optimisation (the figures do not
# depend on it); one thread for torch, whose OpenMP workers spin on a loaded 2-core machine.
ENV = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {
    "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_backend_optimization_level=0",
    "OMP_NUM_THREADS": "1"}


def device_check(cwd, *args, timeout=600):
  """launch/device_check.sh's peer step, run from `cwd`: (exit status, JSON lines, stderr)."""
  out = subprocess.run(["bash", os.path.join(ROOT, "launch", "device_check.sh"), str(cwd / "out"),
                        "--tiny", "--only=peer", *args],
                       cwd=cwd, capture_output=True, text=True, env=ENV, timeout=timeout, check=False)
  return out.returncode, [json.loads(l) for l in out.stdout.splitlines()], out.stderr


@pytest.mark.slow  # lncRNA-Py's steps and nlm_jax's at two batch sizes: a minute or more
def test_peer_step_times_both_programs_at_tiny_sizes(tmp_path):
  python, checkout = peer_paths()
  # A checkout given relative to the caller's folder (the script changes folder).
  status, lines, err = device_check(tmp_path, "--lncrnapy", os.path.relpath(checkout, tmp_path),
                                    "--lncrnapy_python", python)
  assert status == 0, err[-3000:]
  *peers, summary = lines
  assert summary["failed"] == [] and [p["batch_size"] for p in peers] == [8, 16]
  for line in peers:
    nlm, peer = line["nlm_jax"], line["lncrnapy"]
    assert line["step"] == "peer" and line["config"] == "tiny_conv"
    # The same architecture on both sides: CSEBERT + MaskedConvModel has nlm_jax's parameters.
    assert nlm["n_params"] == peer["n_params"]
    assert peer["device"] == "cpu" and peer["amp"] == "bfloat16 autocast"  # its CPU default
    assert peer["lncrnapy"] == os.path.realpath(checkout)
    for figures in (nlm, peer, peer["with_data"]):
      assert figures["step_s"] > 0 and figures["samples_per_s"] > 0
      assert figures["real_nucleotides_per_s"] > 0
    assert len(peer["step_s_all"]) == 2 and 0 < peer["real_fraction"] <= 1
    assert line["samples_per_s_ratio"] == pytest.approx(nlm["samples_per_s"] / peer["samples_per_s"])
    assert line["real_nucleotides_per_s_ratio"] == pytest.approx(
        nlm["real_nucleotides_per_s"] / peer["real_nucleotides_per_s"])
    assert line["samples_per_s_ratio_with_data"] == pytest.approx(
        nlm["samples_per_s"] / peer["with_data"]["samples_per_s"])
    # Both MFUs from one FLOP count and one peak: their ratio is the step times'.
    assert peer["mfu"] / nlm["mfu"] == pytest.approx(nlm["step_s"] / peer["step_s"])
  packed = peers[0]["nlm_jax_packed"]
  assert packed["real_fraction"] >= peers[0]["nlm_jax"]["real_fraction"]
  assert peers[0]["real_nucleotides_per_s_ratio_packed"] == pytest.approx(
      packed["real_nucleotides_per_s"] / peers[0]["lncrnapy"]["real_nucleotides_per_s"])
  assert "nlm_jax_packed" not in peers[1]


def fake_checkout(folder, utils=""):
  """A folder shaped like lncRNA-Py's checkout whose lncrnapy.utils holds `utils`."""
  (folder / "lncrnapy" / "modules").mkdir(parents=True)
  (folder / "lncrnapy" / "__init__.py").write_text("")
  (folder / "lncrnapy" / "modules" / "bert.py").write_text("")
  (folder / "lncrnapy" / "utils.py").write_text(utils)
  return str(folder)


def assert_one_line(tmp_path, message, *args):
  status, lines, err = device_check(tmp_path, *args, timeout=120)
  assert status == 1 and len(lines) == 2, lines
  assert lines[0]["step"] == "peer" and message in lines[0]["error"], lines[0]
  assert lines[1] == {"step": "summary", "seconds": lines[1]["seconds"], "failed": ["peer"]}
  assert "Traceback" not in err, err[-2000:]


def test_a_folder_without_lncrnapy_is_one_line(tmp_path):
  (tmp_path / "empty").mkdir()
  assert_one_line(tmp_path, f"--lncrnapy '{tmp_path}/empty' holds no lncRNA-Py checkout",
                  "--lncrnapy", "empty")


def test_a_python_without_torch_is_one_line(tmp_path):
  assert_one_line(tmp_path, f"{sys.executable} has no PyTorch: give --lncrnapy_python",
                  f"--lncrnapy={fake_checkout(tmp_path / 'co')}", f"--lncrnapy_python={sys.executable}")


def test_a_python_that_is_not_there_is_one_line(tmp_path):
  assert_one_line(tmp_path, f"cannot run --lncrnapy_python '{tmp_path}/no/python'",
                  f"--lncrnapy={fake_checkout(tmp_path / 'co')}", "--lncrnapy_python=no/python")


def test_a_missing_package_of_lncrnapy_is_one_line(tmp_path):
  python, _ = peer_paths()
  assert_one_line(tmp_path, "lncRNA-Py's imports failed in " + python
                  + ": ModuleNotFoundError: No module named 'no_such_package'",
                  f"--lncrnapy={fake_checkout(tmp_path / 'co', 'import no_such_package')}",
                  f"--lncrnapy_python={python}")


def test_without_lncrnapy_the_step_is_skipped_and_the_bench_says_so(tmp_path):
  status, lines, err = device_check(tmp_path, timeout=120)
  assert status == 0 and lines[0]["step"] == "peer" and "no --lncrnapy DIR" in lines[0]["skipped"]
  out = subprocess.run([sys.executable, "-m", "nlm_jax.bench", "--configs=peer",
                        f"--bench_dir={tmp_path / 'bench'}"],
                       capture_output=True, text=True, env=ENV, timeout=120, check=False)
  assert out.returncode == 0, out.stderr[-2000:]
  (line,) = (json.loads(l) for l in out.stdout.splitlines())
  assert line["kind"] == "peer" and line["error"].startswith("no --lncrnapy: give lncRNA-Py's")


def test_a_torch_without_gpu_is_refused_at_accelerator_sizes():
  # BERT-base on a CPU torch beside nlm_jax on a GPU would compare nothing (and take an hour).
  from nlm_jax import bench_peer

  python, checkout = peer_paths()
  if bench_peer.call_peer(python, checkout, ["--check"], 120)["device"] != "cpu":
    pytest.skip("this torch sees a GPU")
  (line,) = bench_peer.records(("t.fa", "v.fa", "generated"), "accelerator", checkout, python,
                               train_record=None, log=lambda _: None)
  assert line == {"kind": "peer", "error": f"{python}'s torch sees no GPU (device cpu): give "
                                           "--lncrnapy_python a Python with a CUDA build of torch"}
