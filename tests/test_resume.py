"""Runs that survive: kill a run (SIGKILL or SIGTERM) in the middle of an epoch, run the
same command again, and get the history of a run that was never interrupted."""

import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import run_command
from nlm_jax import checkpoint, folders, model as model_lib, sampler, synthetic, train
from nlm_jax.config import Config

FLAGS = ["--d_model=32", "--n_kernels=32", "--N=1", "--h=2", "--kernel_size=3",
         "--context_length=16", "--batch_size=8", "--warmup_steps=20", "--epochs=3",
         "--n_samples_per_epoch=400", "--checkpoint_every_steps=7", "--results_dir=R",
         "--model_dir=M", "--exp_prefix=RES"]
NAME = "RES_conv_nm32_sm3_dm32_N1_h2_bs8_ws20_cl16_d0"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  folder = tmp_path_factory.mktemp("data")
  return synthetic.write_demo(str(folder), n_train=300, n_valid=80)


def env():
  return {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {"PYTHONUNBUFFERED": "1"}


def command(data, *extra):
  return [sys.executable, "-m", "nlm_jax.pretrain", *data, *FLAGS, *extra]


def pretrain(folder, *args):
  """The pretrain command, run to its end (from the command server: conftest.run_command)."""
  return run_command("nlm_jax.pretrain", folder, *args, timeout=300)


def history(folder):
  with open(os.path.join(folder, "R", NAME, "history.csv")) as f:
    return f.read()


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
  folder = tmp_path_factory.mktemp("whole")
  out = pretrain(folder, *data, *FLAGS)
  assert out.returncode == 0, out.stderr[-2000:]
  return history(folder)


def kill_mid_epoch(data, folder, sig, *extra):
  """Starts the run (`extra` flags added), waits for a checkpoint saved inside epoch 2, then
  sends `sig`. The run's stderr goes to a file: a pipe read only at the end could fill up
  and block it."""
  err_path = os.path.join(folder, "stderr.txt")
  # A shell without job control starts background jobs with Ctrl-C ignored, children
  # inherit that, and the run rightly keeps it so: start it as a terminal would.
  before = signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    with open(err_path, "w") as err_file:
      proc = subprocess.Popen(command(data, *extra), cwd=folder, env=env(), stderr=err_file)
  finally:
    signal.signal(signal.SIGINT, before)
  model = os.path.join(folder, "M", NAME)
  deadline = time.time() + 240
  try:
    while time.time() < deadline:
      steps = [int(n) for n in os.listdir(model) if n.isdigit()] if os.path.isdir(model) else []
      if any(50 < s < 100 for s in steps):  # 50 steps per epoch: a save inside epoch 2
        break
      if proc.poll() is not None:
        pytest.fail("the run ended before it could be killed: " + read(err_path)[-2000:])
      time.sleep(0.005)
    else:
      pytest.fail("no checkpoint inside epoch 2 appeared")
    proc.send_signal(sig)
    proc.wait(timeout=120)
  finally:
    proc.kill()
  return proc.returncode, read(err_path)


def read(path):
  with open(path) as f:
    return f.read()


@pytest.fixture(scope="module")
def sigkilled(data, tmp_path_factory):
  """A run killed (SIGKILL) inside epoch 2: (folder, exit status, stderr). Tests resume
  copies of it."""
  folder = tmp_path_factory.mktemp("sigkilled")
  return folder, *kill_mid_epoch(data, folder, signal.SIGKILL)


def killed_copy(sigkilled, tmp_path):
  folder, code, err = sigkilled
  for name in ("M", "R"):
    if os.path.isdir(folder / name):
      shutil.copytree(folder / name, tmp_path / name, symlinks=True)
  return code, err


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT],
                         ids=lambda s: s.name)
def test_killed_run_resumes_to_the_same_history(data, uninterrupted, sigkilled, tmp_path, sig):
  """SIGTERM (a preemption notice) and SIGINT (Ctrl-C) save the resume checkpoint and stop
  with one line, exit status 3 and 130; SIGKILL leaves the last checkpoint."""
  if sig == signal.SIGKILL:
    code, _ = killed_copy(sigkilled, tmp_path)
    assert code == -signal.SIGKILL
  else:
    # Started with --fresh under SIGTERM: the same command would start anew once more, so
    # the line names it without --fresh.
    fresh = ("--fresh",) if sig == signal.SIGTERM else ()
    code, err = kill_mid_epoch(data, tmp_path, sig, *fresh)
    assert code == {signal.SIGTERM: 3, signal.SIGINT: 130}[sig], err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"nlm_jax.pretrain: {sig.name} at epoch 2, step ")
    assert "saved the resume checkpoint" in last and "Traceback" not in err
    if fresh:
      assert "run the same command without --fresh to go on (python -m nlm_jax.pretrain " in last
      named = last.split("to go on (")[1]
      assert "--fresh" not in named and all(a in named for a in FLAGS), last
    else:
      assert "run the same command to go on" in last
  rows_before = history(tmp_path).count("\n") - 1 if os.path.exists(
      os.path.join(tmp_path, "R", NAME, "history.csv")) else 0
  assert rows_before < 3
  out = pretrain(tmp_path, *data, *FLAGS)
  assert out.returncode == 0, out.stderr[-2000:]
  assert re.search(r"resuming .* from epoch [23], step \d+", out.stderr), out.stderr[-2000:]
  assert history(tmp_path) == uninterrupted
  # A finished run re-run: nothing to do, nothing changed.
  again = pretrain(tmp_path, *data, *FLAGS)
  assert again.returncode == 0 and "nothing to do" in again.stderr
  assert "resuming" not in again.stderr  # not "from epoch 4" of a 3-epoch run
  assert history(tmp_path) == uninterrupted


def test_the_command_to_go_on_drops_fresh():
  from nlm_jax import command as command_lib

  go_on = command_lib.go_on_command
  assert (go_on("nlm_jax.pretrain", ["a.fa", "b.fa", "--fresh", "--epochs=3"])
          == "python -m nlm_jax.pretrain a.fa b.fa --epochs=3")
  assert go_on("nlm_jax.finetune", ["-fresh=true", "x y.fa"]) == "python -m nlm_jax.finetune 'x y.fa'"
  # --fresh from a flagfile: the flag after it turns it off.
  assert (go_on("nlm_jax.pretrain", ["a.fa", "b.fa", "--flagfile=f.flags"])
          == "python -m nlm_jax.pretrain a.fa b.fa --flagfile=f.flags --nofresh")


def test_second_ctrl_c_stops_at_once():
  """The first Ctrl-C asks the loop to save and stop; then Ctrl-C has its default action
  again (the process ends at once), until the loop is left."""
  before = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
  try:
    stop_requested = train.StopRequests()
    assert stop_requested(1) is None
    signal.raise_signal(signal.SIGINT)
    assert stop_requested(2) == "SIGINT"
    assert signal.getsignal(signal.SIGINT) is signal.SIG_DFL
    stop_requested.restore()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
  finally:
    signal.signal(signal.SIGINT, before)


def test_damaged_newest_checkpoint_falls_back_to_the_one_before(data, uninterrupted, sigkilled,
                                                                tmp_path):
  killed_copy(sigkilled, tmp_path)
  model = tmp_path / "M" / NAME
  newest = max(int(n) for n in os.listdir(model) if n.isdigit())
  for root, _, files in os.walk(model / str(newest)):
    for name in files:
      with open(os.path.join(root, name), "r+b") as f:
        f.truncate(max(0, os.path.getsize(os.path.join(root, name)) // 3))
  out = pretrain(tmp_path, *data, *FLAGS)
  assert out.returncode == 0, out.stderr[-2000:]
  assert f"/{newest} cannot be read" in out.stderr
  assert history(tmp_path) == uninterrupted


def test_changed_settings_are_refused_and_fresh_keeps_the_old_folders(data, tmp_path):
  short = [f for f in FLAGS if not f.startswith("--epochs")] + ["--epochs=1"]
  base = [*data, f"--compilation_cache={tmp_path / 'xla_cache'}"]  # new: the first run compiles
  first = pretrain(tmp_path, *base, *short)
  assert first.returncode == 0, first.stderr[-2000:]
  assert "steps compiled in" in first.stderr and "from the compilation cache" not in first.stderr
  snapshot = sorted(os.listdir(tmp_path / "M" / NAME))
  out = pretrain(tmp_path, *base, *short, "--p_mlm=0.2")
  assert out.returncode == 2
  line = out.stderr.strip()
  assert "\n" not in line and "--p_mlm 0.15 -> 0.2" in line and "--fresh" in line
  assert sorted(os.listdir(tmp_path / "M" / NAME)) == snapshot
  # A longer run of the same settings goes on from where the first stopped.
  out = pretrain(tmp_path, *base, *short[:-1], "--epochs=2")
  assert out.returncode == 0 and "from epoch 2" in out.stderr
  assert "steps compiled in" in out.stderr and "(from the compilation cache)" in out.stderr
  old_results = {n: (tmp_path / "R" / NAME / n).read_bytes()
                 for n in os.listdir(tmp_path / "R" / NAME)}
  assert old_results["history.csv"].count(b"\n") == 3  # header and 2 epochs
  # --fresh starts anew and keeps the old model and results folders aside, untouched.
  out = pretrain(tmp_path, *base, *short, "--p_mlm=0.2", "--fresh")
  assert out.returncode == 0, out.stderr[-2000:]
  kept = [n for n in os.listdir(tmp_path / "M") if n.startswith(NAME + ".replaced-")]
  assert len(kept) == 1
  assert checkpoint.load_config(str(tmp_path / "M" / kept[0])).p_mlm == 0.15
  assert checkpoint.load_config(str(tmp_path / "M" / NAME)).p_mlm == 0.2
  kept = [n for n in os.listdir(tmp_path / "R") if n.startswith(NAME + ".replaced-")]
  assert len(kept) == 1
  assert {n: (tmp_path / "R" / kept[0] / n).read_bytes()
          for n in os.listdir(tmp_path / "R" / kept[0])} == old_results
  new_results = os.listdir(tmp_path / "R" / NAME)
  assert len([n for n in new_results if n.startswith("events.out.")]) == 1  # curves not mixed
  assert (tmp_path / "R" / NAME / "history.csv").read_text().count("\n") == 2


def test_non_finite_step_changes_nothing_and_stops_the_run(tmp_path):
  cfg = Config("t", "v", d_model=32, n_kernels=32, N=1, h=2, kernel_size=3, context_length=16,
               batch_size=8)
  mesh = train.make_mesh(jax.devices()[:1])
  state = train.init_state(cfg, mesh, jax.random.key(0))
  state = state.replace(params=jax.tree.map(lambda x: x.at[...].set(jnp.nan) if x.ndim == 1 else x,
                                            state.params))
  before = jax.device_get(state)
  codes = np.random.default_rng(0).integers(0, 4, (8, cfg.n_nucleotides)).astype(np.uint8)
  batch = sampler.mask_conv(codes, np.random.default_rng(1), cfg)
  state, metrics = train.make_train_step(cfg, mesh)(state, train.to_device(batch, mesh),
                                                    jax.random.key(1))
  assert not np.isfinite(float(metrics["loss_sum"]))
  assert int(state.step) == 0
  for a, b in zip(jax.tree.leaves(before.opt_state), jax.tree.leaves(jax.device_get(state.opt_state))):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(train.Stopped, match=r"epoch 2, step 4 \(batch 14\)"):
    train._check_finite([(2, {"loss_sum": 1.0, "grad_norm": 1.0, "count": 1.0}),
                         (3, {"loss_sum": np.nan, "grad_norm": 1.0, "count": 1.0})], 1, 10,
                        {"loss_sum": 0.0, "count": 0.0, "grad_norm": 0.0, "steps": 0})


def test_failed_save_is_reported_and_earlier_checkpoints_remain(data, tmp_path, monkeypatch):
  """A save that fails (here: a full disk on the second epoch's save) stops the run with
  one line; the first epoch's checkpoint stays whole and the run resumes from it."""
  cfg = Config(*data, d_model=32, n_kernels=32, N=1, h=2, kernel_size=3, context_length=16,
               batch_size=8, warmup_steps=20, epochs=2, n_samples_per_epoch=40,
               checkpoint_every_steps=0, results_dir=str(tmp_path / "R"),
               model_dir=str(tmp_path / "M"))
  saves = []
  real_save = checkpoint.ocp.CheckpointManager.save

  def save(self, step, *args, **kwargs):
    saves.append(step)
    if len(saves) == 2:
      raise OSError(28, "No space left on device")
    return real_save(self, step, *args, **kwargs)

  monkeypatch.setattr(checkpoint.ocp.CheckpointManager, "save", save)
  with pytest.raises(checkpoint.UserError, match="No space left on device.*intact"):
    train.run(cfg, devices=jax.devices()[:1])
  monkeypatch.undo()
  assert sorted(int(n) for n in os.listdir(cfg.checkpoint_path) if n.isdigit()) == [5]
  rows = train.run(cfg, devices=jax.devices()[:1])
  assert len(rows) == 2


def test_one_writer_per_model_folder_and_a_killed_one_leaves_no_lock(tmp_path):
  from nlm_jax.config import UserError

  path = str(tmp_path / "M" / "EXP")
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; from nlm_jax.checkpoint import lock_folder; "
       "lock_folder(sys.argv[1]); print('locked', flush=True); time.sleep(120)", path],
      stdout=subprocess.PIPE, text=True, env=env())
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(UserError, match=f"in use by process {holder.pid} on "):
      checkpoint.lock_folder(path)
  finally:
    holder.kill()
    holder.wait()
  assert os.path.exists(path + ".lock")  # SIGKILL: the file stays, the lock does not
  lock = checkpoint.lock_folder(path)
  with open(path + ".lock") as f:
    assert f.read() == f"process {os.getpid()} on {os.uname().nodename}"
  lock.release()
  assert not os.path.exists(path + ".lock")


def test_checkpoints_with_blocks_one_by_one_restore_and_resume(data, tmp_path):
  """Checkpoints written before the blocks were scanned (params/encoder/block_i, Adam's
  moments likewise) load stacked: the same parameters, and a resumed run goes on exactly
  as it does from the same checkpoint in today's layout."""
  cfg = Config(*data, d_model=32, n_kernels=32, N=2, h=2, kernel_size=3, context_length=16,
               batch_size=8, warmup_steps=4, n_samples_per_epoch=32, epochs=1, n_eval=40,
               precision="fp32",
               results_dir=str(tmp_path / "R"), model_dir=str(tmp_path / "M"))
  devices = jax.devices()[:1]
  train.run(cfg, devices=devices)
  mesh = train.make_mesh(devices)
  reader = checkpoint.Checkpointer(cfg.checkpoint_path, cfg)
  state, meta = reader.restore_latest(train.init_state(cfg, mesh, jax.random.key(0)))
  reader.close()
  old = dataclasses.replace(cfg, model_dir=str(tmp_path / "OLD"), results_dir=str(tmp_path / "R2"))
  saver = checkpoint.Checkpointer(old.checkpoint_path, old)
  saver.save(int(state.step), state.replace(params=model_lib.unstack_blocks(state.params),
                                            opt_state=model_lib.unstack_blocks(state.opt_state)),
             meta, meta["history"][-1]["Accuracy|valid"])
  saver.close()
  step_dir = os.path.join(old.checkpoint_path, str(int(state.step)))
  assert os.path.isdir(os.path.join(step_dir, "params")) and checkpoint._per_layer(step_dir)

  _, params = folders.read(old.checkpoint_path)
  assert params["encoder"]["blocks"]["q"]["kernel"].shape == (2, 32, 32)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(state.params), strict=True):
    np.testing.assert_array_equal(a, b)
  resumed_old = train.run(dataclasses.replace(old, epochs=2), devices=devices)
  resumed_new = train.run(dataclasses.replace(cfg, epochs=2), devices=devices)
  assert len(resumed_old) == 2 and resumed_old == resumed_new


def test_a_state_on_several_cpu_devices_saves_without_compiling(data, tmp_path, caplog):
  """On CPU devices one replica saves each array: orbax's replica-parallel saving sliced
  each array on each device, a small compilation apiece (0.5 s of a tiny run's first
  save). The checkpoint reads back whole."""
  cfg = Config(*data, d_model=32, n_kernels=32, N=1, h=2, kernel_size=3, context_length=16,
               batch_size=8, precision="fp32", model_dir=str(tmp_path / "M"))
  mesh = train.make_mesh(jax.devices()[:4])
  state = train.init_state(cfg, mesh, jax.random.key(3))
  saver = checkpoint.Checkpointer(cfg.checkpoint_path, cfg)
  jax.config.update("jax_log_compiles", True)
  try:
    with caplog.at_level("WARNING"):
      saver.save(1, state, {"epoch": 0, "step": 1, "best": 0.0, "history": []}, 0.5)
      saver.close()
  finally:
    jax.config.update("jax_log_compiles", False)
  compiled = [r.getMessage() for r in caplog.records if "Compiling" in r.getMessage()]
  assert not compiled, compiled[:3]
  _, params = folders.read(cfg.checkpoint_path)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(state.params), strict=True):
    np.testing.assert_array_equal(a, b)


def test_of_equal_best_metrics_the_first_checkpoint_is_the_best(data, tmp_path):
  """lncRNA-Py saves a model only when Accuracy|valid is strictly greater than the best so
  far: of two epochs with the same figure, the first one's model is kept."""
  cfg = Config(*data, d_model=16, n_kernels=16, N=1, h=2, kernel_size=3, context_length=8,
               batch_size=8, precision="fp32", model_dir=str(tmp_path / "M"))
  mesh = train.make_mesh(jax.devices()[:1])
  saver = checkpoint.Checkpointer(cfg.checkpoint_path, cfg)
  states = [train.init_state(cfg, mesh, jax.random.key(k)) for k in range(3)]
  for batch, (state, metric) in enumerate(zip(states, (0.25, 0.5, 0.5)), start=1):
    saver.save(batch, state, {"epoch": batch - 1, "step": 0, "best": metric, "history": []}, metric)
  saver.close()
  _, params = folders.read(cfg.checkpoint_path)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(states[1].params), strict=True):
    np.testing.assert_array_equal(a, b)
