"""NumPy only: lncRNA-Py's classification metrics (its train/metrics.py, scikit-learn's
definitions; pcRNA is the positive class, 1) from confusion counts, and the scores of a
labelled set: those, the confusion matrix and the ROC AUC."""

from __future__ import annotations

from typing import Any

import numpy as np

# lncRNA-Py's classification metrics, in its order; a ratio of 0/0 is 0 (scikit-learn's
# zero_division default, with its warning left out).
METRICS = ("Accuracy", "Precision (pcRNA)", "Recall (pcRNA)", "Precision (ncRNA)",
           "Recall (ncRNA)", "F1 (macro)")


def _ratio(a: float, b: float) -> float:
  return a / b if b else 0.0


def from_confusion(tp: float, fp: float, fn: float, tn: float) -> dict[str, float]:
  """METRICS from the counts: true/false positives (pcRNA), false/true negatives."""
  f1_pc = _ratio(2 * tp, 2 * tp + fp + fn)
  f1_nc = _ratio(2 * tn, 2 * tn + fn + fp)
  return {"Accuracy": _ratio(tp + tn, tp + fp + fn + tn),
          "Precision (pcRNA)": _ratio(tp, tp + fp), "Recall (pcRNA)": _ratio(tp, tp + fn),
          "Precision (ncRNA)": _ratio(tn, tn + fn), "Recall (ncRNA)": _ratio(tn, tn + fp),
          "F1 (macro)": (f1_pc + f1_nc) / 2}


def roc_auc(labels_N: np.ndarray, p_N: np.ndarray) -> float:
  """The area under the ROC curve: the chance that a random pcRNA scores above a random
  ncRNA, ties counting half (the Mann-Whitney U over both counts); NaN without both."""
  labels_N = np.asarray(labels_N, bool)
  n_pos, n_neg = int(labels_N.sum()), int((~labels_N).sum())
  if not (n_pos and n_neg):
    return float("nan")
  _, inverse, counts = np.unique(np.asarray(p_N, np.float64), return_inverse=True, return_counts=True)
  mean_rank = np.cumsum(counts) - (counts - 1) / 2  # ranks from 1, ties averaged
  u = mean_rank[inverse][labels_N].sum() - n_pos * (n_pos + 1) / 2
  return float(u / (n_pos * n_neg))


def classification_scores(labels_N: np.ndarray, p_N: np.ndarray) -> dict[str, Any]:
  """The scores of probabilities P(pcRNA) against labels (1 pcRNA, 0 ncRNA), the class
  being pcRNA where P(pcRNA) >= 0.5 (lncRNA-Py's rule): METRICS, "ROC AUC", and the
  "Confusion matrix" [[pcRNA called pcRNA, pcRNA called ncRNA], [ncRNA called pcRNA,
  ncRNA called ncRNA]] (rows: the true class)."""
  labels_N = np.asarray(labels_N, bool)
  called_N = np.asarray(p_N) >= 0.5
  tp, fn = int(np.sum(labels_N & called_N)), int(np.sum(labels_N & ~called_N))
  fp, tn = int(np.sum(~labels_N & called_N)), int(np.sum(~labels_N & ~called_N))
  return {**from_confusion(tp, fp, fn, tn), "ROC AUC": roc_auc(labels_N, p_N),
          "Confusion matrix": [[tp, fn], [fp, tn]]}


def describe(scores: dict[str, Any]) -> str:
  """The scores as lines for the terminal."""
  lines = [f"  {name:<18} {scores[name]:.4f}" for name in ("F1 (macro)", *METRICS[:-1], "ROC AUC")]
  (tp, fn), (fp, tn) = scores["Confusion matrix"]
  lines += ["  confusion matrix (rows: true class; columns: called)",
            f"  {'':<8}{'pcRNA':>8}{'ncRNA':>8}", f"  {'pcRNA':<8}{tp:>8}{fn:>8}",
            f"  {'ncRNA':<8}{fp:>8}{tn:>8}"]
  return "\n".join(lines)
