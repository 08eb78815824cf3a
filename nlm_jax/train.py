"""Mesh and shardings, state initialisation, the jitted train and eval steps, and the
loop that ties the host data to them. The only module that knows both data and model.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from nlm_jax import checkpoint as checkpoint_lib
from nlm_jax import fasta as fasta_lib
from nlm_jax import history as history_lib
from nlm_jax import model as model_lib
from nlm_jax import optim
from nlm_jax import sampler as sampler_lib
from nlm_jax.config import Config, UserError

EVAL_ROWS = 64  # evaluation batches hold at least this many rows: fewer, larger steps

TrainState = train_state.TrainState


def make_mesh(devices: list[jax.Device] | None = None) -> Mesh:
  """A one-axis `data` mesh over all devices (of every process) or the given ones."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.array(devices), ("data",))


def dummy_inputs(cfg: Config) -> jax.Array:
  """One row of model input: nucleotide codes for conv, token ids otherwise."""
  if cfg.is_token:
    return jnp.zeros((1, cfg.context_length), jnp.int32)
  return jnp.zeros((1, cfg.n_nucleotides), jnp.uint8)


def abstract_params(cfg: Config) -> Any:
  """The parameter tree as ShapeDtypeStructs, without allocating it."""
  model = model_lib.build(cfg)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), dummy_inputs(cfg))["params"])


def init_state(cfg: Config, mesh: Mesh, key: jax.Array) -> TrainState:
  """Initialises abstractly first, then materialises the state replicated on the mesh."""
  model = model_lib.build(cfg)
  tx = optim.make_optimizer(cfg.d_model, cfg.warmup_steps)

  def init(key):
    params = model.init(key, dummy_inputs(cfg))["params"]
    return TrainState.create(apply_fn=model.apply, params=params, tx=tx)

  abstract = jax.eval_shape(init, key)
  shardings = jax.tree.map(lambda _: NamedSharding(mesh, P()), abstract)
  return jax.jit(init, out_shardings=shardings)(key)


def make_train_step(cfg: Config, mesh: Mesh, token_nucs: np.ndarray | None = None) -> Callable:
  """(state, batch, key) -> (state, metrics): batch sharded over `data`, state replicated
  and donated, so parameters and optimizer state are updated in place. Token models
  train with label smoothing 0.1, as lncRNA-Py."""
  model = model_lib.build(cfg)
  smoothing = 0.1 if cfg.is_token else 0.0
  replicated = NamedSharding(mesh, P())
  rows = NamedSharding(mesh, P("data"))

  def step(state: TrainState, batch: dict[str, jax.Array], key: jax.Array):
    dropout_key = jax.random.fold_in(key, state.step)

    def loss_fn(params):
      logits = model.apply({"params": params}, batch["inputs"], train=True,
                           rngs={"dropout": dropout_key})
      sums = model_lib.mlm_loss(logits, batch["targets"], smoothing, token_nucs)
      return sums["train_sum"] / jnp.maximum(sums["count"], 1.0), sums

    (_, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state = state.apply_gradients(grads=grads)
    # A batch without any selected position leaves everything as it was: parameters,
    # Adam's moments and the schedule's step (lncRNA-Py skips such a step too).
    has_targets = sums["count"] > 0
    new_state = jax.tree.map(lambda new, old: jnp.where(has_targets, new, old), new_state, state)
    return new_state, dict(sums, grad_norm=optax.tree.norm(grads))

  return jax.jit(step, in_shardings=(replicated, rows, replicated),
                 out_shardings=(replicated, replicated), donate_argnums=0)


def make_eval_step(cfg: Config, mesh: Mesh, token_nucs: np.ndarray | None = None) -> Callable:
  model = model_lib.build(cfg)
  replicated = NamedSharding(mesh, P())

  def step(params, batch):
    logits = model.apply({"params": params}, batch["inputs"], train=False)
    return model_lib.mlm_loss(logits, batch["targets"], 0.0, token_nucs)

  return jax.jit(step, in_shardings=(replicated, NamedSharding(mesh, P("data"))),
                 out_shardings=replicated)


def to_device(batch: sampler_lib.Batch, mesh: Mesh) -> dict[str, jax.Array]:
  """The one place where host batches become (global) device arrays: each process
  passes its own rows, sharded over the `data` axis."""
  sharding = NamedSharding(mesh, P("data"))
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def process_rows(batch: sampler_lib.Batch) -> sampler_lib.Batch:
  """This process's share of a global batch that every process holds whole."""
  n = len(next(iter(batch.values()))) // jax.process_count()
  first = jax.process_index() * n
  return {k: v[first:first + n] for k, v in batch.items()}


def evaluate(eval_step: Callable, params: Any, data: sampler_lib.Batch, mesh: Mesh,
             batch_rows: int, encoding: sampler_lib.ConvEncoding | sampler_lib.TokenEncoding
             ) -> dict[str, float]:
  """Loss, Accuracy and NucAccuracy over all selected positions of `data`."""
  n = len(data["inputs"])
  totals = None
  for first in range(0, n, batch_rows):
    batch = {k: v[first:first + batch_rows] for k, v in data.items()}
    if len(batch["inputs"]) < batch_rows:  # static shapes: fill with rows without targets
      batch = sampler_lib.concat([batch, encoding.empty_rows(batch_rows - len(batch["inputs"]))])
    sums = eval_step(params, to_device(process_rows(batch), mesh))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  t = {k: float(v) for k, v in jax.device_get(totals).items()}
  count = max(t["count"], 1.0)
  return {"Loss": t["loss_sum"] / count, "Accuracy": t["correct"] / count,
          "NucAccuracy": t["nuc_correct"] / max(t["nuc_count"], 1.0)}


def _check_writable(folder: str, what: str, flag: str) -> None:
  """Fails unless `folder` exists as a writable folder or could be created; creates nothing,
  so a run refused for one folder leaves no trace in the other."""
  parent = os.path.abspath(folder)
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise UserError(f"cannot create the {what} folder {folder!r}: {parent!r} is a file. Choose "
                    f"another {flag}.")
  if not os.access(parent, os.W_OK | os.X_OK):
    raise UserError(f"the {what} folder {folder!r} is not writable ({parent!r}): choose a "
                    f"writable {flag}.")


def _duration(seconds: float) -> str:
  m, s = divmod(int(seconds), 60)
  h, m = divmod(m, 60)
  return f"{h}:{m:02d}:{s:02d}"


def run(cfg: Config, devices: list[jax.Device] | None = None) -> list[dict[str, float]]:
  """Pre-trains as `cfg` says; returns the history (one row per epoch)."""
  mesh = make_mesh(devices)
  n_devices = mesh.devices.size
  if cfg.batch_size % n_devices:
    raise UserError(f"--batch_size {cfg.batch_size} is not divisible by the {n_devices} devices: "
                    f"use a multiple of {n_devices}.")
  train_fa = fasta_lib.Fasta(cfg.train_path, "training")
  valid_fa = fasta_lib.Fasta(cfg.valid_path, "validation")
  writer = jax.process_index() == 0
  if writer:
    _check_writable(cfg.model_root, "model", "--model_dir")
    _check_writable(cfg.results_path, "results", "--results_dir")
  checkpointer = checkpoint_lib.Checkpointer(cfg.checkpoint_path, cfg)
  if writer:
    os.makedirs(cfg.results_path, exist_ok=True)

  logging.info("process %d of %d, %d devices (%s); experiment %s", jax.process_index(),
               jax.process_count(), n_devices, mesh.devices.flat[0].platform, cfg.exp_name)
  logging.info("training on %d sequences of %s, validating on %d of %s", len(train_fa),
               cfg.train_path, min(cfg.n_eval, len(valid_fa)), cfg.valid_path)

  # Evaluation subsets with windows and masks drawn once: fixed inputs and targets.
  encoding = sampler_lib.encoding_for(cfg)
  valid_set = sampler_lib.eval_set(
      valid_fa, sampler_lib.eval_indices(len(valid_fa), cfg.n_eval, cfg.valid_seed), encoding,
      seed=cfg.seed + 1)
  train_set = sampler_lib.eval_set(
      train_fa, sampler_lib.eval_indices(len(train_fa), cfg.n_eval, cfg.seed), encoding,
      seed=cfg.seed + 2)
  eval_rows = cfg.batch_size * -(-EVAL_ROWS // cfg.batch_size)

  init_key, dropout_key = jax.random.split(jax.random.key(cfg.seed))
  state = init_state(cfg, mesh, init_key)
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  sampler = sampler_lib.TrainSampler(train_fa, cfg, encoding, jax.process_index(),
                                     jax.process_count())
  t0 = time.perf_counter()
  batch = to_device(sampler.batch(0, 0), mesh)
  train_step = make_train_step(cfg, mesh, encoding.token_nucs).lower(
      state, batch, dropout_key).compile()
  eval_step = make_eval_step(cfg, mesh, encoding.token_nucs)
  logging.info("%s parameters; train step compiled in %.1f s; %d steps per epoch",
               f"{n_params:,}", time.perf_counter() - t0, sampler.steps_per_epoch)

  rows: list[dict[str, float]] = []
  best = -np.inf
  run_start = time.perf_counter()
  for epoch in range(cfg.epochs):
    epoch_start = time.perf_counter()
    for step_batch in sampler.epoch(epoch):
      # Dispatch is asynchronous: the host samples the next batch while this step runs.
      state, _ = train_step(state, to_device(step_batch, mesh), dropout_key)
    jax.block_until_ready(state.step)
    train_seconds = time.perf_counter() - epoch_start
    row = {}
    for split, data in (("train", train_set), ("valid", valid_set)):
      figures = evaluate(eval_step, state.params, data, mesh, eval_rows, encoding)
      row.update({f"{k}|{split}": v for k, v in figures.items()})
    rows.append(row)
    acc_v = row["Accuracy|valid"]
    improved = acc_v > best
    best = max(best, acc_v)
    checkpointer.save(int(state.step), state.params, state.opt_state,
                      {"epoch": epoch + 1, "history": rows}, {checkpoint_lib.METRIC: acc_v})
    if writer:
      history_lib.write_csv(os.path.join(cfg.results_path, "history.csv"), rows)
      history_lib.plot(cfg.results_path, rows)
    elapsed = time.perf_counter() - run_start
    figures = " ".join(f"{k} {row[k]:.4f}" for k in history_lib.COLUMNS
                       if cfg.is_token or not k.startswith("Nuc"))
    logging.info("epoch %d/%d | %s%s | %.1f steps/s | %s elapsed, %s left", epoch + 1,
                 cfg.epochs, figures, " (best)" if improved else "",
                 sampler.steps_per_epoch / train_seconds, _duration(elapsed),
                 _duration(elapsed / (epoch + 1) * (cfg.epochs - epoch - 1)))
  checkpointer.close()
  logging.info("training finished in %.1f s; best Accuracy|valid %.4f; checkpoint in %s",
               time.perf_counter() - run_start, best, cfg.checkpoint_path)
  return rows
