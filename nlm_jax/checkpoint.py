"""Checkpoints with orbax: the best-Accuracy|valid checkpoint and the latest one,
kept by one preservation policy, with the config stored beside them as config.json.

model_dir/exp_name/
  config.json       the run's Config: enough to rebuild the model
  <step>/           orbax steps: params, opt_state, meta (epoch, history), metrics
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from nlm_jax.config import Config, UserError

METRIC = "Accuracy|valid"
CONFIG_FILE = "config.json"


def _best_fn(metrics: dict[str, float]) -> float:
  return metrics[METRIC]


def _manager(path: str, read_only: bool = False) -> ocp.CheckpointManager:
  policy = checkpoint_managers.AnyPreservationPolicy([
      checkpoint_managers.LatestN(n=1),
      checkpoint_managers.BestN(get_metric_fn=_best_fn, reverse=False, n=1),
  ])
  options = ocp.CheckpointManagerOptions(
      preservation_policy=None if read_only else policy,
      # best_fn makes orbax store the metrics and answer best_step().
      best_fn=_best_fn, best_mode="max", read_only=read_only, create=not read_only)
  return ocp.CheckpointManager(os.path.abspath(path), options=options)


def holds_checkpoint(path: str) -> bool:
  return os.path.isdir(path) and any(
      name.isdigit() or name == CONFIG_FILE for name in os.listdir(path))


class Checkpointer:
  """Saves after every epoch; orbax keeps the latest and the best checkpoint."""

  def __init__(self, path: str, cfg: Config):
    if holds_checkpoint(path):
      raise UserError(f"model folder {path!r} already holds a checkpoint of an earlier run: "
                      "move or delete it, or choose another --exp_prefix or --model_dir.")
    self.path = path
    self.is_writer = jax.process_index() == 0
    if self.is_writer:
      os.makedirs(path, exist_ok=True)
      tmp = os.path.join(path, CONFIG_FILE + ".tmp")
      with open(tmp, "w") as f:
        f.write(cfg.to_json())
      os.replace(tmp, os.path.join(path, CONFIG_FILE))
    self._manager = _manager(path)

  def save(self, step: int, params: Any, opt_state: Any, meta: dict[str, Any],
           metrics: dict[str, float]) -> None:
    """Asynchronous: returns once the arrays are copied; orbax writes in the background."""
    self._manager.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(params), opt_state=ocp.args.StandardSave(opt_state),
        meta=ocp.args.JsonSave(meta)), metrics=metrics)

  def best_step(self) -> int | None:
    return self._manager.best_step()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def load_config(path: str) -> Config:
  config_path = os.path.join(path, CONFIG_FILE)
  if not os.path.isfile(config_path):
    raise UserError(f"{path!r} holds no {CONFIG_FILE}: pass a folder written by nlm_jax.pretrain "
                    "(model_dir/exp_name).")
  try:
    with open(config_path) as f:
      return Config.from_json(f.read())
  except (ValueError, TypeError) as e:
    raise UserError(f"{config_path!r} cannot be read ({e}): restore it from the run that wrote it.") from None


def restore(path: str) -> tuple[Config, Any]:
  """(config, params) of the best checkpoint in `path`, from that folder alone."""
  from nlm_jax import train  # the abstract parameter tree comes from the model

  cfg = load_config(path)
  manager = _manager(path, read_only=True)
  step = manager.best_step()
  if step is None:
    raise UserError(f"{path!r} holds no checkpoint: pass a folder written by nlm_jax.pretrain.")
  restored = manager.restore(step, args=ocp.args.Composite(
      params=ocp.args.StandardRestore(train.abstract_params(cfg))))
  manager.close()
  return cfg, restored["params"]
