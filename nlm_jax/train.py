"""Mesh and shardings, state initialisation, the jitted train and eval steps, and the
loop that ties the host data to them. The only module that knows both data and model.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
import queue
import shutil
import signal
import threading
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from nlm_jax import allocator
from nlm_jax import checkpoint as checkpoint_lib
from nlm_jax import flops as flops_lib
from nlm_jax import history as history_lib
from nlm_jax import model as model_lib
from nlm_jax import sampler as sampler_lib
from nlm_jax import tasks as tasks_lib
from nlm_jax.config import Config, UserError, check_writable

log = logging.getLogger(__name__)  # cli.quiet_libraries keeps nlm_jax's loggers
CACHE_ENV = "NLM_JAX_COMPILATION_CACHE"
_cache_hits: list[int] = []  # programs loaded from the persistent compilation cache
# Accelerators evaluate in batches of at least this many rows: fewer, larger steps. CPUs use
# the training batch: at the bench's e2e size 64 rows took 6-7 ms a row, 8 rows 2-4 ms.
EVAL_ROWS = 64

TrainState = train_state.TrainState


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None, process_id: int | None = None) -> None:
  """jax.distributed.initialize before any computation; arguments left None are detected
  (TPU VMs, Slurm, Open MPI). On CPU, hosts talk through gloo."""
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  except (RuntimeError, ValueError) as e:
    raise UserError(f"jax.distributed.initialize failed ({str(e).splitlines()[0][:200]}): on a "
                    "TPU VM run on every worker; elsewhere give --coordinator_address, "
                    "--num_processes and --process_id.") from None


# Below this much dense work a step (batch x context x d_model^2 x N) is too short to split
# over CPU devices: the all-reduce costs more than the second core gives. Measured on 2 cores:
# the bench's e2e command (2^26) trained 1.27x faster on two devices than on one, the README
# demo (2^23) 10% slower.
CPU_SPLIT_WORK = 2 ** 25


def cpu_device_count(cfg: Config, cores: int | None = None) -> int:
  """--cpu_devices 0: one CPU device per core this process may use, reduced to a divisor of
  the batch size, or 1 when a step's dense work is below CPU_SPLIT_WORK."""
  if cores is None:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  if cfg.batch_size * cfg.context_length * cfg.d_model ** 2 * cfg.N < CPU_SPLIT_WORK:
    return 1
  return max(n for n in range(1, min(cores or 1, cfg.batch_size) + 1) if cfg.batch_size % n == 0)


def use_cpu_devices(count: int, cfg: Config) -> int:
  """Before JAX starts its backends: `count` CPU devices (0: cpu_device_count), so that a
  batch is split over the cores as over GPUs. The user's XLA_FLAGS device count wins.
  Returns the number set, 0 where none was."""
  if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
    return 0
  count = count or cpu_device_count(cfg)
  try:
    jax.config.update("jax_num_cpu_devices", count)
  except RuntimeError:  # the backends are up already (an in-process caller): keep theirs
    return 0
  return count


def use_compilation_cache(folder: str | None = None) -> str | None:
  """Turns on JAX's persistent compilation cache in `folder`: a second run or a resume of
  the same configuration loads its compiled steps instead of compiling them again. None:
  $NLM_JAX_COMPILATION_CACHE, else nlm_jax/xla in the user's cache folder; "none": off.
  Returns the folder, None when off or not writable (then it compiles as before)."""
  if folder is None:
    user_cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    folder = os.environ.get(CACHE_ENV) or os.path.join(user_cache, "nlm_jax", "xla")
  if folder.lower() in ("", "none"):
    return None
  try:
    os.makedirs(folder, exist_ok=True)
  except OSError:
    return None
  if not os.access(folder, os.W_OK | os.X_OK):
    return None
  jax.config.update("jax_compilation_cache_dir", folder)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # the eval step too
  if not _cache_hits:
    _cache_hits.append(0)
    jax.monitoring.register_event_listener(_count_cache_hits)
  return folder


def _count_cache_hits(event: str, **kwargs: Any) -> None:
  if event == "/jax/compilation_cache/cache_hits":
    _cache_hits[0] += 1


def make_mesh(devices: list[jax.Device] | None = None) -> Mesh:
  """A one-axis `data` mesh over all devices (of every process) or the given ones."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.array(devices), ("data",))


dummy_inputs = model_lib.dummy_inputs  # moved below the checkpoint; the old names stay
abstract_params = model_lib.abstract_params


def compiler_options(mesh: Mesh, runs_once: bool = False) -> dict[str, Any] | None:
  """XLA options for a program on `mesh`: on CPUs, LLVM at -O1, or -O0 for a program that
  `runs_once` (the initialisation); elsewhere XLA's defaults (None). The train step of the
  README's e2e command compiled in 1.85 s at -O1 against 2.6 s at the default, and ran
  as fast (44.8 ms); -O0 compiled it in 1.2 s but ran 3.5 times slower."""
  if mesh.devices.flat[0].platform != "cpu":
    return None
  return {"xla_backend_optimization_level": 0 if runs_once else 1}


def init_state(cfg: Config, mesh: Mesh, key: jax.Array,
               task: tasks_lib.Task | None = None) -> TrainState:
  """Initialises abstractly first, then materialises the state replicated on the mesh;
  the optimizer is the task's."""
  model = model_lib.build(cfg)
  tx = (task or tasks_lib.for_config(cfg)).optimizer()

  def init(key):
    params = model.init(key, dummy_inputs(cfg))["params"]
    return TrainState.create(apply_fn=model.apply, params=params, tx=tx)

  program = jax.jit(init, out_shardings=NamedSharding(mesh, P()))  # one sharding for all
  return program.lower(key).compile(compiler_options(mesh, runs_once=True))(key)


def with_params_from(state: TrainState, path: str, cfg: Config) -> TrainState:
  """`state` with the parameters of the model folder `path` (--init_from, or fine-tuning's
  --pretrained_model: its stem and encoder, the classifier's head stays fresh) in place of
  its own, placed as they were; the optimizer state and the step count stay fresh."""
  from nlm_jax import export  # reads every kind of model folder

  loaded = export.read_params(path, dataclasses.replace(cfg, task="mlm"))
  params = dict(state.params)
  for name in params.keys() & loaded.keys():
    # Every process reads the folder; each places its own shards (multi-host safe).
    params[name] = jax.tree.map(
        lambda ref, x: jax.make_array_from_callback(ref.shape, ref.sharding,
                                                    lambda idx: np.asarray(x)[idx]),
        params[name], loaded[name])
  return state.replace(params=params)


def make_train_step(cfg: Config, mesh: Mesh, task: tasks_lib.Task | None = None) -> Callable:
  """(state, batch, key) -> (state, metrics): batch sharded over `data`, state replicated
  and donated, so parameters and optimizer state are updated in place; `key` is the
  step's dropout key (dropout_key). The task gives the loss (token models train with
  label smoothing 0.1, as lncRNA-Py)."""
  task = task or tasks_lib.for_config(cfg)
  model = model_lib.build(cfg)
  replicated = NamedSharding(mesh, P())
  rows = NamedSharding(mesh, P("data"))

  def step(state: TrainState, batch: dict[str, jax.Array], key: jax.Array):
    def loss_fn(params):
      outputs = model.apply({"params": params}, batch["inputs"], train=True,
                            packed=model_lib.Packed.of(batch), rngs={"dropout": key})
      return task.loss(outputs, batch, train=True)

    (objective, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state = state.apply_gradients(grads=grads)
    # A batch without any selected position, or with a non-finite loss or gradient, leaves
    # everything as it was: parameters, Adam's moments and the schedule's step (lncRNA-Py
    # skips the first kind too). The loop stops on the second.
    grad_norm = optax.tree.norm(grads)
    ok = (sums["count"] > 0) & jnp.isfinite(objective) & jnp.isfinite(grad_norm)
    new_state = jax.tree.map(lambda new, old: jnp.where(ok, new, old), new_state, state)
    return new_state, dict(sums, grad_norm=grad_norm)

  return jax.jit(step, in_shardings=(replicated, rows, replicated),
                 out_shardings=(replicated, replicated), donate_argnums=0)


def dropout_key(seed: int, epoch: int, step: int) -> jax.Array:
  """The dropout key of batch `step` of `epoch`: like the batch, a function of where it
  falls in the run, not of the updates applied so far (a batch without targets applies
  none); drawn on the host, from a stream of its own (sampler.rng_for)."""
  rng = sampler_lib.rng_for("dropout", seed, epoch, step)
  return jax.random.wrap_key_data(rng.integers(2 ** 32, size=2, dtype=np.uint32),
                                  impl="threefry2x32")


def make_eval_step(cfg: Config, mesh: Mesh, task: tasks_lib.Task | None = None) -> Callable:
  task = task or tasks_lib.for_config(cfg)
  model = model_lib.build(cfg)
  replicated = NamedSharding(mesh, P())

  def step(params, batch):
    outputs = model.apply({"params": params}, batch["inputs"], train=False)
    return task.loss(outputs, batch, train=False)[1]

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


def wait_for_previous(outputs: list[Any]) -> None:
  """Waits for the step before the one just dispatched (outputs: the steps' outputs in
  order): the host prepares the next batch while one step runs and one waits, never more.
  With more steps queued, XLA's CPU runtime deadlocked in the all-reduce of 2 or 3 CPU
  devices (aborting after 40 s: "Termination timeout for all reduce")."""
  if len(outputs) > 1:
    jax.block_until_ready(outputs[-2])


def evaluate(eval_step: Callable, params: Any, data: sampler_lib.Batch, mesh: Mesh,
             batch_rows: int, task: tasks_lib.Task) -> dict[str, float]:
  """The task's figures over all of `data` (for MLM: Loss, Accuracy and NucAccuracy over
  all selected positions)."""
  encoding = task.encoding
  n = len(data["inputs"])
  sums: list[dict[str, jax.Array]] = []
  for first in range(0, n, batch_rows):
    batch = {k: v[first:first + batch_rows] for k, v in data.items()}
    if len(batch["inputs"]) < batch_rows:  # static shapes: fill with rows without targets
      batch = sampler_lib.concat([batch, encoding.empty_rows(batch_rows - len(batch["inputs"]))])
    sums.append(eval_step(params, to_device(process_rows(batch), mesh)))
    wait_for_previous(sums)
  # Added up on the host in float64: one transfer, no device call per batch and figure.
  fetched = jax.device_get(sums)
  return task.figures({k: float(np.sum([np.float64(f[k]) for f in fetched])) for k in fetched[0]})


class Stopped(Exception):
  """The run stopped early (a signal or a non-finite loss); the message says why and what
  next, `status` is the exit status: 130 after Ctrl-C (the shell's convention), else 3."""

  def __init__(self, message: str, status: int = 3):
    super().__init__(message)
    self.status = status


class StopRequests:
  """stop(batches_done): the signal to save and stop for there ("SIGTERM" or "SIGINT"), or
  None. A first Ctrl-C asks for what SIGTERM does; the second one stops at once (the
  default action: orbax renames a checkpoint into place only when it is complete, so the
  last one stays whole). Hosts get SIGTERM at different steps: with several processes
  jax's preemption service (started by jax.distributed.initialize, it catches SIGTERM
  itself) names one step for all; Ctrl-C there stops at once. `restore` puts the earlier
  handlers back."""

  def __init__(self):
    self.multihost = jax.process_count() > 1
    self.requested: list[str] = []
    self.old_handlers = {}
    if not self.multihost and threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        if signal.getsignal(sig) is not signal.SIG_IGN:  # e.g. SIGINT in a background job
          self.old_handlers[sig] = signal.signal(sig, self._on_signal)

  def _on_signal(self, signum: int, _) -> None:
    if signum == signal.SIGINT:
      signal.signal(signal.SIGINT, signal.SIG_DFL)
    self.requested.append(signal.Signals(signum).name)

  def __call__(self, done: int) -> str | None:
    if self.multihost:
      return "SIGTERM" if multihost_utils.reached_preemption_sync_point(done) else None
    return self.requested[0] if self.requested else None

  def restore(self) -> None:
    for sig, handler in self.old_handlers.items():
      signal.signal(sig, handler)
    self.old_handlers = {}


def prefetch(batches: Iterator[sampler_lib.Batch], depth: int = 4) -> Iterator[sampler_lib.Batch]:
  """Samples ahead in a background thread, at most `depth` batches, so the step loop
  does not wait on the host. The thread owns the sampler (and its pyfastx handle)."""
  q: queue.Queue = queue.Queue(maxsize=depth)
  done = object()
  stop = threading.Event()

  def work():
    try:
      for b in batches:
        while not stop.is_set():
          try:
            q.put(b, timeout=0.1)
            break
          except queue.Full:
            pass
        if stop.is_set():
          return
      q.put(done)
    except BaseException as e:  # handed to the consumer
      q.put(e)

  thread = threading.Thread(target=work, daemon=True, name="sampler")
  thread.start()
  try:
    while (item := q.get()) is not done:
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()


def _make_results_folder(cfg: Config) -> None:
  try:
    os.makedirs(cfg.results_path, exist_ok=True)
  except OSError as e:
    raise UserError(f"cannot create the results folder {cfg.results_path!r} ({e.strerror or e}): "
                    "choose a writable --results_dir.") from None


def _keep_earlier_results(cfg: Config) -> None:
  """A run that starts anew (--fresh, or a model folder gone) never writes into an earlier
  run's results, where history.csv would be overwritten and TensorBoard curves mixed: a
  results folder that holds anything is kept as <folder>.replaced-<time>, like --fresh
  keeps the model folder."""
  path = cfg.results_path
  if not os.listdir(path):
    return
  aside = f"{path}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
  try:
    os.rename(path, aside)
    os.makedirs(path)
  except OSError as e:
    raise UserError(f"cannot keep the earlier results {path!r} as {aside!r} ({e.strerror or e}): "
                    "move them away yourself, or choose another --results_dir.") from None
  log.info("the earlier run's results are kept as %s", aside)


@dataclasses.dataclass
class Position:
  """Where a run stands: the history (one row per epoch done), the best figure so far, the
  next step to train (epoch, step) and the batches done before it (the checkpoints' step
  numbers: with --packing epochs differ in steps), as a checkpoint's metadata keeps them."""
  rows: list[dict[str, float]] = dataclasses.field(default_factory=list)
  best: float = -np.inf
  epoch: int = 0
  step: int = 0
  batch: int = 0

  def meta(self, epoch: int, step: int, batch: int) -> dict[str, Any]:
    return {"epoch": epoch, "step": step, "batch": batch, "best": self.best, "history": self.rows}

  def add(self, row: dict[str, float], metric: str) -> bool:
    """Appends an epoch's row; whether its `metric` is the best so far."""
    self.rows.append(row)
    improved = row[metric] > self.best
    self.best = max(self.best, row[metric])
    return improved


def run(cfg: Config, devices: list[jax.Device] | None = None) -> list[dict[str, float]]:
  """Pre-trains or fine-tunes (cfg.task) as `cfg` says, resuming from model_dir/exp_name
  when it holds a checkpoint of the same configuration; returns the history (one row per
  epoch)."""
  mesh, cfg = _mesh_for(cfg, devices)
  task = tasks_lib.for_config(cfg)
  data = task.open_data()  # the FASTA files, evaluation sets drawn once (fixed inputs)
  checkpointer = _open_folders(cfg, data.identities)
  log.info("process %d of %d, %d devices (%s), %s, %s; experiment %s", jax.process_index(),
           jax.process_count(), mesh.devices.size, mesh.devices.flat[0].platform, cfg.precision,
           allocator.describe(), cfg.exp_name)
  log.info(data.description)
  init_key = jax.random.split(jax.random.key(cfg.seed))[0]  # the first half: as before
  state, at = _start(cfg, mesh, task, checkpointer, init_key)
  if at.epoch >= cfg.epochs:
    log.info("%s already holds all %d epochs: nothing to do (raise --epochs to go on)",
             cfg.checkpoint_path, cfg.epochs)
    checkpointer.close()
    return at.rows
  encoding = task.encoding
  sampler = sampler_lib.TrainSampler(data.train, cfg, encoding, jax.process_index(),
                                     jax.process_count())
  train_step, eval_step, eval_rows = _compile(cfg, mesh, task, state)
  report = _epoch_report(cfg, task, mesh, state, at.epoch, sampler.steps_in(at.epoch))
  stop_requested = StopRequests()
  stream = prefetch(batch for e in range(at.epoch, cfg.epochs)
                    for batch in sampler.epoch(e, at.step if e == at.epoch else 0))
  try:
    done = at.batch  # batches done in the run: the checkpoints' step numbers
    for epoch in range(at.epoch, cfg.epochs):
      first, spe = at.step if epoch == at.epoch else 0, sampler.steps_in(epoch)
      report.start_epoch(epoch, first, spe)
      sums = {"loss_sum": 0.0, "count": 0.0, "grad_norm": 0.0, "steps": 0, "real_nucleotides": 0,
              "sequences": 0}
      pending: list[tuple[int, dict[str, jax.Array]]] = []
      for step in range(first, spe):
        batch = next(stream)  # sampled while the previous step ran
        sums["real_nucleotides"] += encoding.real_nucleotides(batch) * jax.process_count()
        sums["sequences"] += encoding.n_sequences(batch) * jax.process_count()
        state, metrics = train_step(state, to_device(batch, mesh),
                                    dropout_key(cfg.seed, epoch, step))
        pending.append((step, metrics))
        wait_for_previous([m for _, m in pending[-2:]])
        report.step(step, lambda: sum(not m["loss_sum"].is_ready() for _, m in pending))
        done += 1
        stop = stop_requested(done)
        save_now = stop or (cfg.checkpoint_every_steps and done % cfg.checkpoint_every_steps == 0
                            and step + 1 < spe)
        if save_now or len(pending) >= 64 or step + 1 == spe:
          _check_finite(pending, epoch, done - step - 1, sums)
          pending = []
        if save_now:
          checkpointer.save(done, state, at.meta(epoch, step + 1, done), checkpoint_lib.NO_METRIC)
        if stop:
          checkpointer.wait()
          raise Stopped(f"{stop} at epoch {epoch + 1}, step {step + 1}: saved the resume "
                        f"checkpoint in {cfg.checkpoint_path}; run the same command to go on.",
                        130 if stop == "SIGINT" else 3)
      report.evaluating()
      row = {}
      for split, subset in data.eval_sets.items():
        figures = evaluate(eval_step, state.params, subset, mesh, eval_rows, task)
        row.update({f"{k}|{split}": v for k, v in figures.items()})
      improved = at.add(row, task.best_metric)
      report.saving()
      checkpointer.save(done, state, at.meta(epoch + 1, 0, done), row[task.best_metric])
      report.end_epoch(epoch, at.rows, improved, sums, task.learning_rate(int(state.step)))
  except Stopped:
    report.plot(at.rows)  # the plots show every epoch done, as history.csv does
    raise
  finally:
    report.close()
    stream.close()
    stop_requested.restore()
    checkpointer.close()
  report.finish(task.best_metric, at.best, cfg.checkpoint_path)
  return at.rows


def _mesh_for(cfg: Config, devices: list[jax.Device] | None) -> tuple[Mesh, Config]:
  """The mesh over `devices` (default: all), and `cfg` with --precision auto resolved; a
  batch that cannot be split evenly or does not fit is one line."""
  mesh = make_mesh(devices)
  n_devices, platform = mesh.devices.size, mesh.devices.flat[0].platform
  if cfg.precision == "auto":  # bf16 where the matrix units are built for it
    cfg = dataclasses.replace(cfg, precision="fp32" if platform == "cpu" else "bf16")
  if cfg.batch_size % n_devices:
    raise UserError(f"--batch_size {cfg.batch_size} is not divisible by the {n_devices} devices: "
                    f"use a multiple of {n_devices}"
                    f"{' (or set --cpu_devices)' if platform == 'cpu' else ''}.")
  model_lib.check_fits(cfg, cfg.batch_size // n_devices, mesh.local_devices[0], True,
                       "--batch_size (or --context_length)")
  return mesh, cfg


def _open_folders(cfg: Config, identities: dict[str, str]) -> checkpoint_lib.Checkpointer:
  """The checkpointer of model_dir/exp_name (it locks the folder and says whether the run
  resumes); the writing process also checks both folders and starts the results folder."""
  writer = jax.process_index() == 0
  if writer:
    check_writable(cfg.model_root, "model", "--model_dir")
    check_writable(cfg.results_path, "results", "--results_dir")
    _make_results_folder(cfg)
  checkpointer = checkpoint_lib.Checkpointer(cfg.checkpoint_path, cfg, identities)
  if writer:
    if not checkpointer.resuming:
      _keep_earlier_results(cfg)
    if cfg.encoding_method == "bpe":  # the model folder is complete without --data_dir
      shutil.copyfile(cfg.bpe_path, os.path.join(cfg.checkpoint_path, checkpoint_lib.BPE_FILE))
  return checkpointer


def _start(cfg: Config, mesh: Mesh, task: tasks_lib.Task,
           checkpointer: checkpoint_lib.Checkpointer, key: jax.Array) -> tuple[TrainState, Position]:
  """The state to train from: the last checkpoint's when resuming, else a fresh one (with
  the parameters of --init_from or --pretrained_model when given); and where it stands."""
  state, at = init_state(cfg, mesh, key, task), Position()
  restored = checkpointer.restore_latest(state) if checkpointer.resuming else None
  if restored is not None:
    state, meta = restored
    # Checkpoints from before the batch count was kept: every epoch had the same steps.
    steps = -(-cfg.n_samples_per_epoch // cfg.batch_size)
    batch = meta.get("batch", meta["epoch"] * steps + meta["step"])
    at = Position(meta["history"], meta["best"], meta["epoch"], meta["step"], batch)
    if at.epoch < cfg.epochs:  # else there is nothing to do, as run says
      log.info("resuming %s from epoch %d, step %d", cfg.checkpoint_path, at.epoch + 1, at.step)
  source = cfg.init_from or cfg.pretrained_model
  if source and not (at.rows or at.step):  # not resumed: a fresh start
    state = with_params_from(state, source, cfg)
    log.info("parameters from %s; optimizer and learning-rate schedule start anew", source)
  return state, at


def _compile(cfg: Config, mesh: Mesh, task: tasks_lib.Task,
             state: TrainState) -> tuple[Callable, Callable, int]:
  """The compiled train and eval steps (from the persistent cache when it holds them) and
  the rows of an eval batch: on CPU the training batch (larger ones ran slower a row),
  elsewhere at least EVAL_ROWS."""
  on_cpu = mesh.devices.flat[0].platform == "cpu"
  eval_rows = cfg.batch_size * (1 if on_cpu else -(-EVAL_ROWS // cfg.batch_size))
  empty = lambda rows, packed=False: to_device(
      task.encoding.empty_rows(rows // jax.process_count(), packed), mesh)
  t0, hits = time.perf_counter(), _cache_hits[:1]
  lowered = (make_train_step(cfg, mesh, task).lower(state, empty(cfg.batch_size, cfg.packing),
                                                    dropout_key(cfg.seed, 0, 0)),
             make_eval_step(cfg, mesh, task).lower(state.params, empty(eval_rows)))
  # XLA compiles without the GIL: both programs at once.
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    train_step, eval_step = pool.map(lambda program: program.compile(compiler_options(mesh)),
                                     lowered)
  log.info("train and eval steps compiled in %.1f s%s; evaluation batches of %d rows",
           time.perf_counter() - t0, " (from the compilation cache)" if _cache_hits[:1] != hits else "",
           eval_rows)
  return train_step, eval_step, eval_rows


def _epoch_report(cfg: Config, task: tasks_lib.Task, mesh: Mesh, state: TrainState,
                  first_epoch: int, spe: int) -> history_lib.EpochReport:
  """The run's EpochReport, with the FLOPs of a step and the peaks for its MFU: the chip's
  dense peak where flops.CHIPS knows the device kind, the measured matmul rate beside it.
  spe: the steps of the first epoch (--packing: of that epoch; the others differ)."""
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  n_devices, platform = mesh.devices.size, mesh.devices.flat[0].platform
  flops = model_lib.train_flops(cfg, n_params, cfg.batch_size // n_devices)
  dtype, device = model_lib.compute_dtype(cfg), jax.local_devices()[0]
  measured, measured_before = flops_lib.cached_peak_flops(
      dtype, device, jax.config.jax_compilation_cache_dir)
  peak = flops_lib.Peak.of(device.device_kind, jnp.dtype(dtype), measured)
  log.info("%s parameters; %d steps per epoch%s; %.3g FLOP per step and device, matmul rate "
           "%.3g FLOP/s%s; MFU against the %s", f"{n_params:,}", spe,
           " (packed: this epoch's)" if cfg.packing else "", flops, measured,
           " (measured before)" if measured_before else "", peak.describe())
  # The CPU devices of a process share its cores, whose peak one device's matmul measures.
  host_share = len(mesh.local_devices) if platform == "cpu" else 1
  writer = jax.process_index() == 0
  return history_lib.EpochReport(
      cfg.results_path if writer else None, cfg.epochs, first_epoch, cfg.batch_size,
      task.encoding.window, task.figures_names, task.progress_columns(), flops * host_share,
      measured, cfg.progress, peak.chip and peak.flops_per_s)


def _check_finite(pending: list[tuple[int, dict[str, jax.Array]]], epoch: int, batches_before: int,
                  sums: dict[str, float]) -> None:
  """Fetches the metrics of the dispatched steps; stops at the first non-finite one.
  (The step itself already refused to apply a non-finite update.) batches_before: the
  run's batches before the epoch's first."""
  fetched = jax.device_get([m for _, m in pending])
  for (step, _), m in zip(pending, fetched):
    if not (np.isfinite(m["loss_sum"]) and np.isfinite(m["grad_norm"])):
      raise Stopped(f"non-finite loss or gradient at epoch {epoch + 1}, step {step + 1} (batch "
                    f"{batches_before + step + 1}); nothing was saved over the checkpoints. Try a "
                    "longer --warmup_steps, --precision fp32, or check the input.")
    sums["loss_sum"] += float(m["loss_sum"])
    sums["count"] += float(m["count"])
    sums["grad_norm"] += float(m["grad_norm"])
    sums["steps"] += 1
