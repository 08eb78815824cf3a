"""What differs between pre-training and fine-tuning, for the one loop of train.py: the
data (the training source and the fixed evaluation sets), the optimizer, the loss and
the metric sums on the device, the figures of an evaluation and the metric that picks
the best checkpoint. The loop never asks which task it runs.

  MaskedLM        masked language modelling (nlm_jax.pretrain)
  Classification  pcRNA vs ncRNA, lncRNA-Py's Classifier (nlm_jax.finetune)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nlm_jax import fasta as fasta_lib
from nlm_jax import history as history_lib
from nlm_jax import model as model_lib
from nlm_jax import optim
from nlm_jax import sampler as sampler_lib
from nlm_jax import scores
from nlm_jax.config import Config, UserError

# lncRNA-Py's classification metrics (train/metrics.py), in its column order.
CLS_FIGURES = ("Loss", *scores.METRICS)
MLM_FIGURES = ("Loss", "Accuracy", "NucAccuracy")


@dataclasses.dataclass
class Data:
  """The training source, the fixed evaluation sets ("train", "valid") of a run, and the
  identity (size and CRC-32) of each FASTA file, which a resume must find unchanged."""
  train: sampler_lib.Source
  eval_sets: dict[str, sampler_lib.Batch]
  identities: dict[str, str]
  description: str  # for the log


class MaskedLM:
  """Masked language modelling: masked windows, cross-entropy over the selected positions
  (label smoothing 0.1 for token models, as lncRNA-Py), Accuracy and NucAccuracy; the
  warm-up/rsqrt schedule; the best checkpoint has the highest Accuracy|valid."""

  figures_names = MLM_FIGURES
  best_metric = "Accuracy|valid"

  def __init__(self, cfg: Config):
    self.cfg = cfg
    self.encoding = sampler_lib.encoding_for(cfg)
    self.smoothing = 0.1 if cfg.is_token else 0.0

  def open_data(self) -> Data:
    """The training FASTA, and evaluation subsets of lncRNA-Py's sizes (sampler.eval_sizes;
    RandomState(42) picks the validation subset) with windows and masks drawn once: fixed
    inputs and targets."""
    cfg = self.cfg
    train_fa = fasta_lib.Fasta(cfg.train_path, "training", targets=True)
    valid_fa = fasta_lib.Fasta(cfg.valid_path, "validation", targets=True)
    n_train_eval, n_valid_eval = sampler_lib.eval_sizes(len(train_fa), len(valid_fa), cfg.n_eval)
    valid = sampler_lib.eval_set(
        valid_fa, sampler_lib.eval_indices(len(valid_fa), n_valid_eval, cfg.valid_seed),
        self.encoding, seed=cfg.seed + 1)
    train = sampler_lib.eval_set(
        train_fa, sampler_lib.train_eval_indices(len(train_fa), n_train_eval, cfg.seed), self.encoding,
        seed=cfg.seed + 2)
    _check_targets(valid, "validation", cfg.valid_path)
    _check_targets(train, "training", cfg.train_path)
    return Data(train_fa, {"train": train, "valid": valid},
                {"training": train_fa.identity, "validation": valid_fa.identity},
                f"training on {len(train_fa)} sequences of {cfg.train_path}, validating on "
                f"{n_valid_eval} of {cfg.valid_path}; evaluating {n_train_eval} training sequences")

  def progress_columns(self) -> tuple[str, ...]:
    """The figures of the progress line: NucAccuracy only where it differs from Accuracy."""
    return tuple(c for c in history_lib.columns(self.figures_names)
                 if self.cfg.is_token or not c.startswith("Nuc"))

  def optimizer(self) -> optax.GradientTransformation:
    return optim.make_optimizer(self.cfg.d_model, self.cfg.warmup_steps)

  def learning_rate(self, update: int) -> float:
    """The learning rate of update `update` (1, 2, ...)."""
    return float(optim.lr_schedule(self.cfg.d_model, self.cfg.warmup_steps)(max(update - 1, 0)))

  def loss(self, outputs: jax.Array, batch: dict[str, jax.Array], train: bool
           ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(what the step minimises, metric sums): `count` counts the targets, `loss_sum`
    sums the plain cross-entropy that is logged."""
    sums = model_lib.mlm_loss(outputs, batch["targets"], self.smoothing if train else 0.0,
                              self.encoding.token_nucs)
    return sums["train_sum"] / jnp.maximum(sums["count"], 1.0), sums

  def figures(self, t: dict[str, float]) -> dict[str, float]:
    """Loss, Accuracy and NucAccuracy over all selected positions."""
    count = max(t["count"], 1.0)
    return {"Loss": t["loss_sum"] / count, "Accuracy": t["correct"] / count,
            "NucAccuracy": t["nuc_correct"] / max(t["nuc_count"], 1.0)}


def classification_figures(t: dict[str, float]) -> dict[str, float]:
  """The loss and lncRNA-Py's metrics (scores.py) from the summed loss and the confusion
  counts (pcRNA positive)."""
  loss = t["loss_sum"] / t["count"] if t["count"] else 0.0
  return {"Loss": loss, **scores.from_confusion(t["tp"], t["fp"], t["fn"], t["tn"])}


def freeze_labels(cfg: Config, params: Any) -> Any:
  """"frozen" or "trained" for every parameter: --freeze_network freezes everything
  but the head (hidden layers and output), --freeze_kernels the conv stem's kernels."""

  def label(path: tuple[Any, ...], _) -> str:
    names = [getattr(p, "key", str(p)) for p in path]
    head = names[0] == "output" or names[0].startswith("hidden")
    if cfg.freeze_network and not head:
      return "frozen"
    if cfg.freeze_kernels and names[:2] == ["stem", "conv"]:
      return "frozen"
    return "trained"

  return jax.tree_util.tree_map_with_path(label, params)


class Classification:
  """pcRNA (positive) vs ncRNA, as lncRNA-Py's train script: one logit, BCE-with-logits
  with pos_weight n_ncRNA / n_pcRNA (unless --no_weighted_loss), Adam with a constant
  learning rate, global-norm clipping at 1.0; evaluation on a training subset of the
  validation set's size and on the whole validation set; the best checkpoint has the
  highest F1 (macro)|valid."""

  figures_names = CLS_FIGURES
  best_metric = "F1 (macro)|valid"

  def __init__(self, cfg: Config):
    self.cfg = cfg
    self.encoding = sampler_lib.encoding_for(cfg)
    self.pos_weight = 1.0  # set by open_data from the training set's class counts

  def open_data(self) -> Data:
    """The four FASTA files as two two-class sources; the evaluation sets are each
    sequence's first window (no draws: fixed inputs), on all validation records and on
    as many training records (lncRNA-Py's rule)."""
    cfg = self.cfg
    train = sampler_lib.TwoClass(fasta_lib.Fasta(cfg.train_path, "pcRNA training"),
                                 fasta_lib.Fasta(cfg.nc_train_path, "ncRNA training"))
    valid = sampler_lib.TwoClass(fasta_lib.Fasta(cfg.valid_path, "pcRNA validation"),
                                 fasta_lib.Fasta(cfg.nc_valid_path, "ncRNA validation"))
    if not cfg.no_weighted_loss:
      self.pos_weight = train.pos_weight
    n_subset = min(len(valid), len(train))
    return Data(train, {
        "train": sampler_lib.eval_set(
            train, sampler_lib.train_eval_indices(len(train), n_subset, cfg.seed), self.encoding, 0),
        "valid": sampler_lib.eval_set(valid, np.arange(len(valid)), self.encoding, 0)},
        {f"{what} {split}": fa.identity for split, source in (("training", train), ("validation", valid))
         for what, fa in (("pcRNA", source.pc), ("ncRNA", source.nc))},
        f"training on {len(train.pc)} pcRNAs and {len(train.nc)} ncRNAs (pcRNA loss weight "
        f"{self.pos_weight:.4g}), validating on {len(valid.pc)} and {len(valid.nc)}; evaluating "
        f"{n_subset} training sequences")

  def progress_columns(self) -> tuple[str, ...]:
    return ("Loss|train", "F1 (macro)|train", "Loss|valid", "Accuracy|valid", "F1 (macro)|valid")

  def optimizer(self) -> optax.GradientTransformation:
    """torch.optim.Adam(lr, weight_decay) after clipping at 1.0; frozen parameters get
    no update at all (so they stay bit-identical, weight decay included)."""
    cfg = self.cfg
    train = optim.make_finetune_optimizer(cfg.learning_rate, cfg.weight_decay)
    if not (cfg.freeze_network or cfg.freeze_kernels):
      return train
    return optax.multi_transform({"trained": train, "frozen": optax.set_to_zero()},
                                 lambda params: freeze_labels(cfg, params))

  def learning_rate(self, update: int) -> float:
    del update
    return self.cfg.learning_rate

  def loss(self, outputs: jax.Array, batch: dict[str, jax.Array], train: bool
           ) -> tuple[jax.Array, dict[str, jax.Array]]:
    del train  # lncRNA-Py's evaluation loss is weighted too
    sums = model_lib.bce_loss(outputs, batch["labels"], self.pos_weight)
    return sums["loss_sum"] / jnp.maximum(sums["count"], 1.0), sums

  def figures(self, t: dict[str, float]) -> dict[str, float]:
    return classification_figures(t)


def _check_targets(data: sampler_lib.Batch, what: str, path: str) -> None:
  """No silent nonsense: an evaluation set without a single target reports Loss 0 and
  Accuracy 0 every epoch, and its training set would teach nothing."""
  if not (data["targets"] != sampler_lib.IGNORE).any():
    raise UserError(f"the {what} set of {path!r} gives no position to predict (its sequences "
                    "hold too few A, C, G, T, or are too short for the masking): pass longer "
                    "nucleotide sequences.")


Task = MaskedLM | Classification


def for_config(cfg: Config) -> Task:
  return Classification(cfg) if cfg.is_classifier else MaskedLM(cfg)
