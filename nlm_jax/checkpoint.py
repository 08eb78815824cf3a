"""Checkpoints with orbax: one folder per experiment, one preservation policy that keeps
the best checkpoint (Accuracy|valid; F1 (macro)|valid when fine-tuning) and the latest
(resume) checkpoint.

model_dir/exp_name.lock   held (flock) by the run writing the folder: one writer at a time
model_dir/exp_name/
  config.json       the run's Config: enough to rebuild the model and to resume
  data.json         size and CRC-32 of the FASTA files: a resume must read the same
  tokenizer.bpe     BPE encodings: a copy of --bpe_file
  <batch>/          orbax steps, numbered by completed batches: params, opt_state,
                    meta (epoch, step in epoch, best, history) and metrics

Checkpoints written before the encoder's blocks were scanned hold them one by one
(params/encoder/block_i); they are read into the stacked layout (encoder/blocks) as they
load, for resuming as well as for use.

Every checkpoint holds the full training state, so the best one can be resumed from as
well as the latest. Saves inside an epoch carry the metric -1, so only epoch-end
checkpoints compete for "best". Orbax writes each step to a temporary folder and
renames it when complete: a killed save leaves no half checkpoint behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers

from nlm_jax import errors
from nlm_jax import model as model_lib
from nlm_jax import outputs
from nlm_jax.config import Config, UserError

log = logging.getLogger(__name__)  # cli.quiet_libraries keeps nlm_jax's loggers
# orbax stores the best-metric of a save under this key; fine-tuning stores its F1 (macro)|valid
# there too (the key is what every existing folder holds).
METRIC = "Accuracy|valid"
NO_METRIC = -1.0  # saves inside an epoch: never "best"
CONFIG_FILE = "config.json"
DATA_FILE = "data.json"  # size and CRC-32 of the FASTA files the run started with
BPE_FILE = "tokenizer.bpe"  # a copy of --bpe_file, for BPE encodings


def _best_fn(metrics: dict[str, float]) -> tuple[float, float]:
  """The order of checkpoints; orbax keeps (and restores) the last. Of equal metrics the
  earliest checkpoint comes last, as lncRNA-Py saves only on a strictly greater metric
  (orbax's sort is stable: it kept the latest). Folders from before the batch was stored
  in the metrics order by the metric alone."""
  return metrics[METRIC], -metrics.get("batch", 0)


def _one_replica_saves_on_cpu() -> None:
  """orbax shares the saving of a replicated array among its replicas ("replica-parallel"),
  slicing it on each device. The CPU devices of a process share one memory: the slices
  only cost a small compilation per array and device (0.5 s at a tiny model's first save).
  There one replica saves each array, as orbax does on GPUs. (orbax has no public switch
  for its registered handler; should the attribute go, saving stays as orbax's default.)"""
  handler = ocp.type_handlers.get_type_handler(jax.Array)
  if getattr(handler, "_use_replica_parallel", False) and jax.devices()[0].platform == "cpu":
    handler._use_replica_parallel = False  # pylint: disable=protected-access


def _manager(path: str, read_only: bool = False) -> ocp.CheckpointManager:
  _one_replica_saves_on_cpu()
  policy = checkpoint_managers.AnyPreservationPolicy([
      checkpoint_managers.LatestN(n=1),
      checkpoint_managers.BestN(get_metric_fn=_best_fn, reverse=False, n=1),
  ])
  options = ocp.CheckpointManagerOptions(
      preservation_policy=None if read_only else policy,
      # best_fn makes orbax store the metrics and answer best_step().
      best_fn=_best_fn, best_mode="max", read_only=read_only, create=not read_only,
      save_interval_steps=0 if read_only else 1)  # read-only: orbax warns unless 0
  with _without_read_only_notice():
    return ocp.CheckpointManager(os.path.abspath(path), options=options)


@contextlib.contextmanager
def _without_read_only_notice():
  """Orbax warns "Given directory is read only" whenever a manager opens a folder to read
  it: news to nobody who loads a model, so that one line is dropped."""
  orbax_logger = logging.getLogger("absl")  # orbax logs through absl.logging

  def keep(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Given directory is read only")

  orbax_logger.addFilter(keep)
  try:
    yield
  finally:
    orbax_logger.removeFilter(keep)


def _steps(path: str) -> list[int]:
  return sorted(int(n) for n in os.listdir(path) if n.isdigit()) if os.path.isdir(path) else []


def _json_damage(step_dir: str) -> str | None:
  """What is wrong with a step folder's small JSON files (orbax reads them all when it
  opens the folder and fails on one damaged file), or None."""
  names = ["_CHECKPOINT_METADATA", os.path.join("metrics", "metrics"), os.path.join("meta", "metadata")]
  names += [os.path.join(item, n) for item in ("params", "opt_state", "step")
            for n in ("_METADATA", "_sharding")]
  for name in names:
    file = os.path.join(step_dir, name)
    if not os.path.exists(file):
      continue
    try:
      with open(file) as f:
        json.load(f)
    except (ValueError, OSError) as e:
      return f"{name}: {e}"
  return None


def _set_aside_damaged(path: str) -> None:
  """Moves step folders with damaged JSON next to the model folder (nothing is deleted)."""
  for step in _steps(path):
    damage = _json_damage(os.path.join(path, str(step)))
    if damage:
      aside = f"{path}.damaged-{step}"
      if jax.process_index() == 0:
        os.rename(os.path.join(path, str(step)), aside)
      log.warning("checkpoint %s/%d cannot be read (%s); set aside as %s, trying the one "
                      "before it", path, step, damage, aside)


def _per_layer(step_dir: str) -> bool:
  """Whether the step folder holds the encoder's blocks one by one (encoder/block_i: the
  layout before scanned layers) rather than stacked (encoder/blocks)."""
  try:
    with open(os.path.join(step_dir, "params", "_METADATA")) as f:
      tree = json.load(f)["tree_metadata"]
  except (OSError, ValueError, KeyError):
    return False  # orbax reports what is wrong when it reads the folder
  return any(len(p := [k["key"] for k in v["key_metadata"]]) > 1 and p[0] == "encoder"
             and p[1].startswith("block_") for v in tree.values())


def _restore_target(tree: Any, per_layer: bool) -> Any:
  """Restore target for `tree` (arrays or ShapeDtypeStructs): in the per-layer layout of
  old checkpoints when `per_layer`."""
  tree = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
  return model_lib.unstack_blocks(tree) if per_layer else tree


def load_config(path: str) -> Config:
  config_path = os.path.join(path, CONFIG_FILE)
  if not os.path.isfile(config_path):
    raise UserError(f"{path!r} holds no {CONFIG_FILE}: pass a folder written by nlm_jax.pretrain "
                    "(model_dir/exp_name).")
  try:
    with open(config_path) as f:
      return Config.from_json(f.read())
  except (ValueError, TypeError) as e:
    raise UserError(f"{config_path!r} cannot be read ({e}): restore it from the run that wrote "
                    "it, or start anew with --fresh.") from None


def _write_json(path: str, name: str, text: str) -> None:
  tmp = os.path.join(path, name + ".tmp")
  try:
    with open(tmp, "w") as f:
      f.write(text)
    os.replace(tmp, os.path.join(path, name))
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise


def _check_data(path: str, data: dict[str, str]) -> None:
  """A resume must read the FASTA files the run started with (size and CRC-32)."""
  try:
    with open(os.path.join(path, DATA_FILE)) as f:
      old = json.load(f)
  except (OSError, ValueError):
    return  # a folder from before data.json: nothing to compare
  changed = [k for k in data if k in old and old[k] != data[k]]
  if changed:
    raise UserError(f"the {' and '.join(changed)} FASTA differ(s) from the one(s) the run in "
                    f"{path!r} started with (size or checksum): pass the same files to resume, "
                    "or add --fresh to start anew (the old folder is kept).")


def lock_folder(path: str) -> outputs.Lock:
  """One writer per model folder: an exclusive flock on `<folder>.lock`, held for the whole
  run (outputs.Lock)."""
  try:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  except OSError as e:
    raise UserError(f"cannot create the model folder {path!r} ({e.strerror or e}): choose a "
                    "writable --model_dir.") from None
  return outputs.Lock(
      path, f"model folder {path!r} is in use by {{holder}}, which is writing it: wait until "
      "that run ends (or stop it), or choose another --exp_prefix or --model_dir.",
      f"cannot create the model folder {path!r} ({{why}}): choose a writable --model_dir.")


class Checkpointer:
  """Opens the experiment's model folder: anew, or to resume the same configuration and
  the same data (`data`: name -> fasta.Fasta.identity of each FASTA file).

  A folder without checkpoints (a start that failed before its first save) holds nothing
  to resume: it is started anew whatever settings it names."""

  def __init__(self, path: str, cfg: Config, data: dict[str, str] | None = None):
    self.path = path
    self.is_writer = jax.process_index() == 0
    data = data or {}
    exists = bool(_steps(path))
    if jax.process_count() > 1:  # every process has looked before process 0 changes the folder
      multihost_utils.sync_global_devices("nlm_jax.checkpoint: model folder looked at")
    if not cfg.fresh:  # read-only checks first: a refused run changes nothing
      self._check_resumable(cfg, data, exists)
    self._lock = self._take_lock()
    try:
      self._open(cfg, data, exists)
    except BaseException:
      self._release()
      raise

  def _take_lock(self) -> outputs.Lock | None:
    """Process 0 takes the lock; with several processes all learn whether it could, so
    none is left waiting in a collective for a process that stopped."""
    lock, error = None, None
    if self.is_writer:
      try:
        lock = lock_folder(self.path)
      except UserError as e:
        error = e
    if jax.process_count() > 1:
      failed = int(multihost_utils.broadcast_one_to_all(np.int32(error is not None)))
      if failed and error is None:
        raise UserError(f"process 0 could not take the model folder {self.path!r} (its error "
                        "line says why): fix that, then start all processes again.")
    if error is not None:
      raise error
    return lock

  def _check_resumable(self, cfg: Config, data: dict[str, str], exists: bool) -> None:
    if not exists and not os.path.isfile(os.path.join(self.path, CONFIG_FILE)):
      return
    old = load_config(self.path)
    diff = cfg.differences(old)
    if diff and exists:
      changes = ", ".join(f"--{k} {getattr(old, k)!r} -> {getattr(cfg, k)!r}" for k in diff)
      raise UserError(f"model folder {self.path!r} holds a run with other settings ({changes}): "
                      "rerun with its settings to resume, add --fresh to start anew (the old "
                      "folder is kept aside), or keep both runs by giving this one another "
                      "--exp_prefix.")
    if exists:
      _check_data(self.path, data)

  def _open(self, cfg: Config, data: dict[str, str], exists: bool) -> None:
    path = self.path
    if exists and cfg.fresh:
      aside = f"{path}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
      if self.is_writer:
        os.rename(path, aside)
      log.info("--fresh: the earlier run's folder is kept as %s", aside)
      exists = False
    self.resuming = exists
    if self.is_writer:
      try:
        os.makedirs(path, exist_ok=True)
        _write_json(path, CONFIG_FILE, cfg.to_json())  # a resumed run may have changed --epochs
        _write_json(path, DATA_FILE, json.dumps(data, indent=2, sort_keys=True))
      except OSError as e:
        raise UserError(f"cannot write the model folder {path!r} ({e.strerror or e}): free disk "
                        "space or choose a writable --model_dir.") from None
      _set_aside_damaged(path)
    self._manager = _manager(path)

  def _release(self) -> None:
    if self._lock is not None:
      self._lock.release()

  def save(self, batch: int, state: Any, meta: dict[str, Any], metric: float) -> None:
    """Asynchronous: returns once the arrays are copied; orbax writes in the background.
    `batch` counts completed batches; a second save of the same batch is skipped."""
    if batch in self._manager.all_steps():
      return
    with self._reporting_failures():
      self._manager.save(batch, args=ocp.args.Composite(
          params=ocp.args.StandardSave(state.params),
          opt_state=ocp.args.StandardSave(state.opt_state),
          step=ocp.args.StandardSave({"step": state.step}),
          meta=ocp.args.JsonSave(meta)), metrics={METRIC: metric, "batch": batch})

  @contextlib.contextmanager
  def _reporting_failures(self):
    """A failed save (full disk, lost permission) becomes one line, and its temporary
    folder is removed; orbax renames a step's folder only when complete, so earlier
    checkpoints remain."""
    try:
      yield
    except UserError:
      raise
    except Exception as e:
      if self.is_writer:
        with contextlib.suppress(Exception):  # an earlier save may still be writing its folder
          self._manager.wait_until_finished()
        for name in os.listdir(self.path):
          if ".orbax-checkpoint-tmp" in name:
            shutil.rmtree(os.path.join(self.path, name), ignore_errors=True)
      then = ("run the same command to resume from the last checkpoint, which is intact"
              if _steps(self.path) else "run the same command again")
      cure = (errors.limit_reached(f"{e} {e.__cause__ or e.__context__}")
              or f"free disk space or fix the folder's permissions, then {then}")
      raise UserError(f"saving a checkpoint in {self.path!r} failed ({str(e).splitlines()[0][:200]}): "
                      f"{cure}.") from None

  def restore_latest(self, abstract_state: Any) -> tuple[Any, dict[str, Any]] | None:
    """(state, meta) of the newest checkpoint that reads back whole, or None if there is
    none; a damaged newest checkpoint is reported and the one before it is used."""
    for batch in reversed(self._manager.all_steps()):
      per_layer = _per_layer(os.path.join(self.path, str(batch)))
      try:
        restored = self._manager.restore(batch, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(_restore_target(abstract_state.params, per_layer)),
            opt_state=ocp.args.StandardRestore(
                _restore_target(abstract_state.opt_state, per_layer)),
            step=ocp.args.StandardRestore({"step": abstract_state.step}),
            meta=ocp.args.JsonRestore()))
      except Exception as e:  # orbax/tensorstore raise many types for damaged files
        log.warning("checkpoint %s/%d cannot be read (%s); trying the one before it",
                        self.path, batch, str(e).splitlines()[0][:200])
        continue
      if per_layer:
        logging.info("checkpoint %s/%d holds the blocks one by one: stacked as it loads",
                     self.path, batch)
      state = abstract_state.replace(params=model_lib.stack_blocks(restored["params"]),
                                     opt_state=model_lib.stack_blocks(restored["opt_state"]),
                                     step=restored["step"]["step"])
      return state, restored["meta"]
    if self._manager.all_steps():
      raise UserError(f"no checkpoint in {self.path!r} can be read: start anew with --fresh (the "
                      "damaged folder is kept).")
    return None

  def wait(self) -> None:
    with self._reporting_failures():
      self._manager.wait_until_finished()

  def close(self) -> None:
    try:
      with self._reporting_failures():
        try:
          self._manager.wait_until_finished()
        except Exception:
          with contextlib.suppress(Exception):  # its threads end here; the save's error is reported
            self._manager.close()
          raise
        self._manager.close()
    finally:
      self._release()


def restore(path: str, cfg: Config, remedy: str) -> Any:
  """The parameters of the best checkpoint in the model folder `path`, for the architecture
  of `cfg` (folders.read_config's), on this process's first device. What stands in the way
  (no checkpoint, a damaged file, a tensor of another shape than cfg's) is a UserError
  naming the file and ending in `remedy`."""
  if not _steps(path):
    raise UserError(f"{path!r} holds no checkpoint: pass a folder of nlm_jax.pretrain or "
                    "nlm_jax.finetune after its first epoch.")
  try:
    manager = _manager(path, read_only=True)
  except Exception as e:  # orbax raises many types for damaged files
    raise UserError(f"the checkpoints in {path!r} cannot be read ({_first_line(e)}): "
                    f"{remedy}.") from None
  try:
    params = _restore_best(manager, path, cfg, remedy)
  except BaseException:
    with contextlib.suppress(Exception):  # a failed read may have closed orbax's event loop
      manager.close()
    raise
  manager.close()
  return params


def _restore_best(manager: ocp.CheckpointManager, path: str, cfg: Config, remedy: str) -> Any:
  try:
    step = manager.best_step()
  except Exception as e:
    raise UserError(f"the checkpoints in {path!r} cannot be read ({_first_line(e)}): "
                    f"{remedy}.") from None
  if step is None:
    raise UserError(f"{path!r} holds no checkpoint with a metric: {remedy}.")
  step_dir = os.path.join(path, str(step))
  damage = _json_damage(step_dir)
  if damage:
    raise UserError(f"checkpoint {step_dir!r} is damaged ({damage}): {remedy}.")
  per_layer = _per_layer(step_dir)
  # Read onto this process's first device: the run may have saved from another topology
  # (several CPU devices or GPUs), which orbax refuses to take from the metadata.
  here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = _restore_target(jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=here),
      model_lib.abstract_params(cfg)), per_layer)
  _check_shapes(step_dir, target, remedy)
  try:
    restored = manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(target)))
  except Exception as e:  # a truncated or garbled array file
    raise UserError(f"checkpoint {step_dir!r} cannot be read ({_first_line(e)}): {remedy}.") from None
  return model_lib.stack_blocks(restored["params"])


def _first_line(e: BaseException) -> str:
  """What a library's error says first, without tensorstore's dump of its whole spec."""
  line = (str(e).strip().splitlines() or [type(e).__name__])[0]
  return line.split(" See full TensorStore details")[0][:200]


def _check_shapes(step_dir: str, target: Any, remedy: str) -> None:
  """The arrays stored in `step_dir`'s params must be those of `target`, shape for shape:
  else its config.json describes another model (it was edited, or the folder mixed up)."""
  from etils import epath

  try:
    stored = ocp.StandardCheckpointHandler().metadata(
        epath.Path(os.path.abspath(os.path.join(step_dir, "params"))))
    stored = getattr(stored, "tree", stored)
  except Exception as e:
    raise UserError(f"checkpoint {step_dir!r} cannot be read ({_first_line(e)}): {remedy}.") from None
  have = {"/".join(str(k.key) for k in p): tuple(x.shape)
          for p, x in jax.tree_util.tree_leaves_with_path(stored)}
  need = {"/".join(str(k.key) for k in p): tuple(x.shape)
          for p, x in jax.tree_util.tree_leaves_with_path(target)}
  for name in sorted(need.keys() | have.keys()):
    if name not in have:
      problem = f"lacks {name}, which its config.json builds"
    elif name not in need:
      problem = f"holds {name}, which its config.json does not build"
    elif have[name] != need[name]:
      problem = f"holds {name} of shape {have[name]}, where its config.json builds {need[name]}"
    else:
      continue
    raise UserError(f"checkpoint {step_dir!r} {problem}: the weights and config.json disagree "
                    f"(was config.json edited?); {remedy}.")
