"""Multi-host training on one machine: two processes with one CPU device each, joined by
jax.distributed (gloo), must train exactly as one process with two devices does, since
both run the same global batch over a two-device `data` mesh."""

import os
import socket
import subprocess
import sys
import time

import pytest

from nlm_jax import history, synthetic

TINY_FLAGS = ["--d_model=32", "--n_kernels=32", "--N=1", "--h=2", "--kernel_size=3",
              "--context_length=16", "--batch_size=8", "--warmup_steps=4", "--epochs=2",
              "--n_samples_per_epoch=32"]
TIMEOUT_S = 300

class HistoriesDiffer(AssertionError):
  pass


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  return synthetic.write_demo(str(tmp_path_factory.mktemp("data")), n_train=200, n_valid=60)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def env_with(devices: int | None) -> dict[str, str]:
  """The subprocess environment, built explicitly: conftest sets XLA_FLAGS for pytest.
  Every run compiles without LLVM optimisation (alike in all, so the comparison holds):
  compiling takes most of these runs' time."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["XLA_FLAGS"] = "--xla_backend_optimization_level=0"
  if devices is not None:
    env["XLA_FLAGS"] += f" --xla_force_host_platform_device_count={devices}"
  return env


def start(cwd, args, env, name):
  """A pretrain process, its stderr in a file (no pipe to fill up and block it)."""
  err = open(os.path.join(cwd, f"{name}.stderr"), "w+")
  cmd = [sys.executable, "-m", "nlm_jax.pretrain", *args]
  return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=err), err


def finish(procs):
  """Waits for every process (TIMEOUT_S in all); kills them all on a timeout or when one
  fails, since its peers would then wait for it until their collectives time out.
  Returns [(exit status, stderr)]."""
  deadline = time.monotonic() + TIMEOUT_S
  try:
    while any(p.poll() is None for p, _ in procs):
      if time.monotonic() > deadline or any(p.poll() not in (None, 0) for p, _ in procs):
        break
      time.sleep(0.2)
  finally:
    for p, _ in procs:
      if p.poll() is None:
        p.kill()
    for p, _ in procs:
      p.wait()
  out = []
  for p, err in procs:
    err.seek(0)
    out.append((p.returncode, err.read()))
    err.close()
  return out


def exp_folder(root):
  (name,) = os.listdir(root)
  return os.path.join(root, name)


def single_and_distributed(tmp_path, data, flags):
  """Runs one process with 2 fake devices and two processes with 1 device each, all at
  once; returns (single history, distributed history, model folder, stderrs)."""
  train_fa, valid_fa = data
  port = free_port()
  single = ["--results_dir=R1", "--model_dir=M1"]
  dist = ["--results_dir=R2", "--model_dir=M2", "--distributed",
          f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2"]
  procs = [start(tmp_path, [train_fa, valid_fa, *flags, *single], env_with(2), "single")]
  procs += [start(tmp_path, [train_fa, valid_fa, *flags, *dist, f"--process_id={i}"],
                  env_with(None), f"process{i}") for i in range(2)]
  results = finish(procs)
  for name, (rc, err) in zip(("single", "process 0", "process 1"), results):
    assert rc == 0, f"{name} exited with {rc}:\n{err[-4000:]}"
  rows1 = history.read_csv(os.path.join(exp_folder(tmp_path / "R1"), "history.csv"))
  rows2 = history.read_csv(os.path.join(exp_folder(tmp_path / "R2"), "history.csv"))
  return rows1, rows2, exp_folder(tmp_path / "M2"), [err for _, err in results]


def check(tmp_path, data, flags):
  rows1, rows2, model, (err1, *errs) = single_and_distributed(tmp_path, data, flags)
  assert "process 0 of 1, 2 devices" in err1
  for i, err in enumerate(errs):
    assert f"process {i} of 2, 2 devices" in err, err[-4000:]
    assert "epoch 2/2" in err and "training finished" in err
  # Only process 0 writes the results folder; orbax writes the checkpoint from both.
  assert os.path.isfile(os.path.join(model, "config.json"))
  assert any(name.isdigit() for name in os.listdir(model)), os.listdir(model)
  assert len(rows2) == 2
  assert rows1[0].keys() == rows2[0].keys()
  assert rows2[1] != rows2[0]  # it trained
  for epoch, (r1, r2) in enumerate(zip(rows1, rows2, strict=True)):
    for k in r1:
      if abs(r2[k] - r1[k]) > 1e-5:
        raise HistoriesDiffer(f"epoch {epoch + 1} {k}: two processes {r2[k]}, one {r1[k]}\n"
                              f"one process:   {rows1}\ntwo processes: {rows2}")


def test_two_processes_train_as_one_process_with_two_devices_conv(tmp_path, data):
  check(tmp_path, data, TINY_FLAGS + ["--encoding_method=conv"])


def test_two_processes_train_as_one_process_with_two_devices_kmer(tmp_path, data):
  check(tmp_path, data, TINY_FLAGS + ["--encoding_method=kmer", "--k=3"])


def test_a_locked_model_folder_stops_every_process_at_once(tmp_path, data):
  """Another run holds the folder: process 0 says so in one line and process 1 stops too,
  instead of waiting in a collective for process 0."""
  train_fa, valid_fa = data
  folder = tmp_path / "M2" / "MLM_conv_nm32_sm3_dm32_N1_h2_bs8_ws4_cl16_d0"
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; from nlm_jax.checkpoint import lock_folder; "
       "lock_folder(sys.argv[1]); print('locked', flush=True); time.sleep(300)", str(folder)],
      stdout=subprocess.PIPE, text=True, env=env_with(None))
  procs = []
  try:
    assert holder.stdout.readline().strip() == "locked"
    port = free_port()
    dist = ["--results_dir=R2", "--model_dir=M2", "--distributed",
            f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2"]
    start_s = time.monotonic()
    procs = [start(tmp_path, [train_fa, valid_fa, *TINY_FLAGS, *dist, f"--process_id={i}"],
                   env_with(None), f"process{i}") for i in range(2)]
    for p, _ in procs:  # not finish(): it kills the others once one has failed
      p.wait(timeout=120)
    (rc0, err0), (rc1, err1) = [(p.returncode, (err.seek(0), err.read())[1]) for p, err in procs]
    assert time.monotonic() - start_s < 120
  finally:
    for p in [holder] + [p for p, _ in procs]:
      p.kill()
      p.wait()
  assert rc0 == 2 and f"in use by process {holder.pid}" in err0, err0[-3000:]
  assert rc1 == 2 and "process 0 could not take the model folder" in err1, err1[-3000:]
  assert "Traceback" not in err0 + err1
