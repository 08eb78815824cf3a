import dataclasses
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import numpy_logits, random_seqs, write_fasta
from nlm_jax import fasta as fasta_lib, folders, history, layout, model as model_lib
from nlm_jax import sampler, synthetic, tasks, train
from nlm_jax.config import Config

# Whole runs use one of the eight fake devices. XLA's in-process CPU collectives have hit
# their 40 s rendezvous timeout (an abort) in long multi-device runs on a loaded 2-core
# machine; the sharded step itself is tested on 8 devices in test_train.py.
RUN_DEVICES = jax.devices()[:1]
TINY = dict(d_model=32, n_kernels=32, N=2, h=4, kernel_size=3, context_length=16, batch_size=8,
            warmup_steps=4, n_samples_per_epoch=32, encoder_dropout=0.0)


def tiny(tmp_path, **kw):
  t = write_fasta(tmp_path / "t.fa", random_seqs(40, 10, 120, seed=1))
  v = write_fasta(tmp_path / "v.fa", random_seqs(20, 10, 120, seed=2))
  return Config(t, v, **{**TINY, **kw})


def batches(cfg, n):
  s = sampler.TrainSampler(fasta_lib.Fasta(cfg.train_path), cfg, sampler.encoding_for(cfg))
  return [s.batch(0, i) for i in range(n)]


def run_steps(cfg, devices, host_batches):
  mesh = train.make_mesh(devices)
  state = train.init_state(cfg, mesh, jax.random.key(0))
  step = train.make_train_step(cfg, mesh)
  losses = []
  for b in host_batches:
    state, m = step(state, train.to_device(b, mesh), jax.random.key(1))
    losses.append(float(m["loss_sum"] / m["count"]))
  return state, losses


def global_norm(tree):
  return float(jnp.sqrt(sum(jnp.sum(x.astype(jnp.float32) ** 2) for x in jax.tree.leaves(tree))))


def test_golden_one_step(tmp_path):
  """Pins the loss, gradient norm and parameter norm of one step on a fixed batch.

  If this fails after a deliberate change to the model, its initialisation, the
  optimizer, the masking or the sampler's draws, check that the change is meant,
  then re-pin the numbers printed by `pytest -s tests/test_train.py -k golden`."""
  cfg = tiny(tmp_path, encoder_dropout=0.1, dropout=0.1)
  mesh = train.make_mesh(jax.devices()[:1])
  state = train.init_state(cfg, mesh, jax.random.key(0))
  norm0 = global_norm(state.params)
  state, m = train.make_train_step(cfg, mesh)(state, train.to_device(batches(cfg, 1)[0], mesh),
                                              jax.random.key(1))
  got = dict(norm0=norm0, loss=float(m["loss_sum"] / m["count"]), count=float(m["count"]),
             grad_norm=float(m["grad_norm"]), norm1=global_norm(state.params))
  print("golden:", got)
  want = GOLDEN
  assert got["count"] == want["count"]
  for k in ("norm0", "loss", "grad_norm", "norm1"):
    np.testing.assert_allclose(got[k], want[k], rtol=2e-5, err_msg=f"golden {k} moved")
  assert int(state.step) == 1


GOLDEN = dict(norm0=25.687070846557617, loss=1.4817287921905518, count=40.0,
              grad_norm=1.5482338666915894, norm1=25.921249389648438)


@pytest.mark.parametrize("encoding", [dict(), dict(encoding_method="kmer", k=2)])
def test_one_device_and_eight_devices_agree(tmp_path, encoding):
  assert len(jax.devices()) == 8, "conftest sets 8 fake CPU devices"
  # A small learning rate: Adam turns reduction-order noise in a near-zero gradient into
  # a step of up to lr, which would hide a real difference at a large one.
  cfg = tiny(tmp_path, warmup_steps=100, **encoding)
  host_batches = batches(cfg, 4)
  state1, losses1 = run_steps(cfg, jax.devices()[:1], host_batches)
  state8, losses8 = run_steps(cfg, jax.devices(), host_batches)
  np.testing.assert_allclose(losses1, losses8, rtol=1e-5)
  assert losses1[-1] != losses1[0]
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(state1.params),
                         jax.tree.leaves(state8.params)):
    if "'k']['bias']" in jax.tree_util.keystr(path):
      # The key bias shifts every score of a query alike: softmax ignores it, its true
      # gradient is 0, and Adam turns the rounding noise left there into +-lr steps.
      continue
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  assert state8.params["encoder"]["blocks"]["q"]["kernel"].sharding.is_fully_replicated
  assert len(state8.params["encoder"]["blocks"]["q"]["kernel"].sharding.device_set) == 8


def test_batch_without_targets_changes_nothing(tmp_path):
  cfg = tiny(tmp_path)
  mesh = train.make_mesh()
  state = train.init_state(cfg, mesh, jax.random.key(0))
  before = jax.device_get(state)
  empty = sampler.ConvEncoding(cfg).empty_rows(8)
  state, m = train.make_train_step(cfg, mesh)(state, train.to_device(empty, mesh), jax.random.key(1))
  assert float(m["count"]) == 0 and np.isfinite(float(m["loss_sum"]))
  assert int(state.step) == 0
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(jax.device_get(state))):
    np.testing.assert_array_equal(a, b)


def test_run_writes_history_and_best_checkpoint_that_restores(tmp_path):
  cfg = tiny(tmp_path, epochs=3, results_dir=str(tmp_path / "R"), model_dir=str(tmp_path / "M"))
  rows = train.run(cfg, devices=RUN_DEVICES)
  assert len(rows) == 3
  csv = os.path.join(cfg.results_path, "history.csv")
  for written, row in zip(history.read_csv(csv), rows, strict=True):
    assert written == pytest.approx(row, abs=1e-6)
  with open(csv) as f:
    assert f.readline().strip() == ("Epoch,Loss|train,Accuracy|train,NucAccuracy|train,"
                                    "Loss|valid,Accuracy|valid,NucAccuracy|valid")
  for png in ("loss.png", "accuracy.png", "nucaccuracy.png"):
    assert os.path.getsize(os.path.join(cfg.results_path, png)) > 1000
  # The restored best checkpoint reproduces its validation figures exactly.
  restored_cfg, params = folders.read(cfg.checkpoint_path)
  assert restored_cfg == dataclasses.replace(cfg, precision="fp32")  # "auto" resolved on CPU
  best = max(rows, key=lambda r: r["Accuracy|valid"])
  mesh = train.make_mesh(RUN_DEVICES)
  valid_fa = fasta_lib.Fasta(cfg.valid_path)
  encoding = sampler.ConvEncoding(cfg)
  valid = sampler.eval_set(valid_fa, sampler.eval_indices(len(valid_fa), cfg.n_eval, 42), encoding,
                           seed=cfg.seed + 1)
  figures = train.evaluate(train.make_eval_step(cfg, mesh), params, valid, mesh, 64,
                           tasks.MaskedLM(cfg))
  assert figures["Accuracy"] == pytest.approx(best["Accuracy|valid"], abs=1e-6)
  assert figures["Loss"] == pytest.approx(best["Loss|valid"], abs=1e-6)
  assert figures["NucAccuracy"] == figures["Accuracy"]


def test_same_seed_same_history(tmp_path):
  a = train.run(tiny(tmp_path, epochs=2, results_dir=str(tmp_path / "R1"), model_dir=str(tmp_path / "M1")),
                devices=RUN_DEVICES)
  b = train.run(tiny(tmp_path, epochs=2, results_dir=str(tmp_path / "R2"), model_dir=str(tmp_path / "M2")),
                devices=RUN_DEVICES)
  assert a == b


def test_pretrain_command_learns_above_chance(tmp_path):
  """End to end through the CLI on the synthetic motif data: Accuracy|valid well above 0.25."""
  train_fa, valid_fa = synthetic.write_demo(str(tmp_path / "data"), n_train=800, n_valid=200)
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  cmd = [sys.executable, "-m", "nlm_jax.pretrain", train_fa, valid_fa,
         "--flagfile=" + os.path.join(os.path.dirname(__file__), "..", "launch", "demo.flags"),
         "--epochs=4", "--results_dir=R", "--model_dir=M"]
  out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  name = "DEMO_conv_nm64_sm9_dm64_N2_h4_bs16_ws300_cl64_d0"
  rows = history.read_csv(tmp_path / "R" / name / "history.csv")
  assert len(rows) == 4
  assert rows[-1]["Accuracy|valid"] > 0.35, rows
  assert rows[-1]["Loss|valid"] < rows[0]["Loss|valid"]
  assert "epoch 4/4" in out.stderr and "steps/s" in out.stderr
  if sys.platform == "linux":  # the command re-executed itself with mimalloc (allocator.py)
    assert "malloc: mimalloc;" in out.stderr, out.stderr[:2000]
  cfg, params = folders.read(str(tmp_path / "M" / name))
  assert cfg.exp_name == name and "encoder" in params


def test_bf16_trains_above_chance(tmp_path):
  train_fa, valid_fa = synthetic.write_demo(str(tmp_path / "data"), n_train=600, n_valid=150)
  cfg = Config(train_fa, valid_fa, precision="bf16", d_model=64, n_kernels=64, N=2, h=4,
               kernel_size=9, context_length=64, batch_size=16, warmup_steps=300,
               n_samples_per_epoch=2000, epochs=2, results_dir=str(tmp_path / "R"),
               model_dir=str(tmp_path / "M"))
  rows = train.run(cfg, devices=RUN_DEVICES)
  assert rows[-1]["Accuracy|valid"] > 0.33, rows  # chance ~0.25; fp32 reaches ~0.44 here


def test_token_models_train_on_the_label_smoothed_loss(tmp_path):
  """original-behaviour.md 9: token models minimise cross-entropy with label smoothing 0.1
  (PyTorch's: 0.1 spread over all classes). The step's training loss and gradient must be
  those of that loss, written out here from the logits (no dropout: train mode is
  deterministic)."""
  cfg = tiny(tmp_path, encoding_method="kmer", k=2)
  mesh = train.make_mesh(jax.devices()[:1])
  state = train.init_state(cfg, mesh, jax.random.key(0))
  params = jax.device_get(state.params)
  batch = batches(cfg, 1)[0]
  model = model_lib.build(cfg)

  def smoothed_loss(p):
    logp = jax.nn.log_softmax(model.apply({"params": p}, batch["inputs"], train=False))
    t = batch["targets"]
    nll = -jnp.take_along_axis(logp, jnp.maximum(t, 0)[..., None], axis=-1)[..., 0]
    return jnp.sum((0.9 * nll - 0.1 * logp.mean(-1)) * (t >= 0)) / jnp.sum(t >= 0)

  want, grads = jax.value_and_grad(smoothed_loss)(params)
  _, m = train.make_train_step(cfg, mesh)(state, train.to_device(batch, mesh), jax.random.key(1))
  assert float(m["train_sum"] / m["count"]) == pytest.approx(float(want), rel=1e-5)
  # Without smoothing the step would give the plain cross-entropy, which is logged: it
  # differs by 10x the tolerance above.
  assert abs(float(m["train_sum"] - m["loss_sum"])) > 1e-4 * float(m["loss_sum"])
  assert float(m["grad_norm"]) == pytest.approx(float(optax.tree.norm(grads)), rel=1e-4)


def test_one_step_matches_a_numpy_reference(tmp_path):
  """Faithfulness, not only stability (the golden test pins the implementation's own
  numbers): the step's loss against a NumPy forward pass written from the formulas of
  original-behaviour.md 7 (conftest.numpy_logits, on lncRNA-Py's layout of the same
  parameters), and its update against section 9: Adam's first, bias-corrected step is
  lr(1) * g / |g| with lr(1) = d_model^-1/2 * warmup^-3/2, here for the head's bias,
  whose gradient is computed in NumPy too; no parameter moves further."""
  cfg = tiny(tmp_path)  # conv, no dropout
  mesh = train.make_mesh(jax.devices()[:1])
  state = train.init_state(cfg, mesh, jax.random.key(0))
  before = jax.device_get(state.params)
  batch = batches(cfg, 1)[0]
  state, m = train.make_train_step(cfg, mesh)(state, train.to_device(batch, mesh),
                                              jax.random.key(1))
  after = jax.device_get(state.params)

  logits = numpy_logits(layout.to_tensors(cfg, before), folders.lncrnapy_config(cfg),
                        batch["inputs"]).astype(np.float64)
  logp = logits - logits.max(-1, keepdims=True)
  logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
  selected = batch["targets"] >= 0
  targets = batch["targets"][selected].astype(int)
  loss = -logp[selected][np.arange(len(targets)), targets].mean()
  assert float(m["loss_sum"] / m["count"]) == pytest.approx(loss, rel=1e-5)

  grad_bias = (np.exp(logp[selected]) - np.eye(4)[targets]).mean(0)
  lr1 = cfg.d_model ** -0.5 * cfg.warmup_steps ** -1.5
  moved = after["head"]["deconv_bias"] - before["head"]["deconv_bias"]
  np.testing.assert_allclose(moved, -lr1 * np.sign(grad_bias), rtol=1e-4)
  largest = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(after),
                                                           jax.tree.leaves(before)))
  assert lr1 * 0.99 < largest <= lr1 * (1 + 1e-5)


def test_the_step_draws_dropout_from_the_key_of_its_epoch_and_step(tmp_path):
  """Not from the count of applied updates (a batch without targets applies none): the
  same (seed, epoch, step) gives the same step whatever state.step says, another another."""
  cfg = tiny(tmp_path, encoder_dropout=0.1, dropout=0.1)
  mesh = train.make_mesh(jax.devices()[:1])
  step = train.make_train_step(cfg, mesh)
  batch = train.to_device(batches(cfg, 1)[0], mesh)
  state0 = train.init_state(cfg, mesh, jax.random.key(0))

  def loss(key, applied=0):  # the state is donated: a copy for every call
    state = jax.tree.map(jnp.copy, state0)
    _, m = step(state.replace(step=state.step + applied), batch, key)
    return float(m["loss_sum"])

  key = train.dropout_key(0, 2, 5)
  assert loss(key) == loss(key, applied=7) == loss(train.dropout_key(0, 2, 5))
  assert loss(key) != loss(train.dropout_key(0, 2, 6))
  assert loss(key) != loss(train.dropout_key(1, 2, 5))
  assert loss(train.dropout_key(0, 0, 1)) != loss(train.dropout_key(0, 1, 0))


def test_cpu_device_count_splits_only_steps_large_enough():
  e2e = Config("t.fa", "v.fa", d_model=128, N=2, n_kernels=128, kernel_size=9, context_length=256,
               batch_size=8)
  assert [train.cpu_device_count(e2e, cores) for cores in (1, 2, 3, 4, 16)] == [1, 2, 2, 4, 8]
  assert train.cpu_device_count(dataclasses.replace(e2e, batch_size=6), 4) == 3  # a divisor
  demo = Config("t.fa", "v.fa", d_model=64, N=2, n_kernels=64, kernel_size=9, context_length=64,
                batch_size=16)  # launch/demo.flags: too small a step to gain from splitting
  assert train.cpu_device_count(demo, 2) == 1
