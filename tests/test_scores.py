"""scores.py: lncRNA-Py's classification metrics, the confusion matrix and the ROC AUC,
against scikit-learn where it is installed (pip install -e ".[plots]"), else against
references written here from the definitions (per-class precision and recall, every
pcRNA/ncRNA pair for the AUC)."""

import numpy as np
import pytest

from nlm_jax import scores

try:
  from sklearn import metrics as sk
except ImportError:
  sk = None


def reference(labels, p):
  """The scores from their definitions, another way than scores.py computes them."""
  called = p >= 0.5
  if sk is not None:
    return {"Accuracy": sk.accuracy_score(labels, called),
            "Precision (pcRNA)": sk.precision_score(labels, called, pos_label=1, zero_division=0),
            "Recall (pcRNA)": sk.recall_score(labels, called, pos_label=1, zero_division=0),
            "Precision (ncRNA)": sk.precision_score(labels, called, pos_label=0, zero_division=0),
            "Recall (ncRNA)": sk.recall_score(labels, called, pos_label=0, zero_division=0),
            "F1 (macro)": sk.f1_score(labels, called, average="macro", zero_division=0),
            "ROC AUC": sk.roc_auc_score(labels, p),
            "Confusion matrix": sk.confusion_matrix(labels, called, labels=[1, 0]).tolist()}
  out, f1 = {"Accuracy": np.mean(called == labels)}, []
  for name, cls in (("pcRNA", 1), ("ncRNA", 0)):
    mine, truly = called == cls, labels == cls
    precision = (mine & truly).sum() / mine.sum() if mine.sum() else 0.0
    recall = (mine & truly).sum() / truly.sum() if truly.sum() else 0.0
    out[f"Precision ({name})"], out[f"Recall ({name})"] = precision, recall
    f1.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
  out["F1 (macro)"] = np.mean(f1)
  pos, neg = p[labels == 1][:, None], p[labels == 0][None, :]
  out["ROC AUC"] = np.mean((pos > neg) + 0.5 * (pos == neg))
  out["Confusion matrix"] = [[int(((labels == t) & (called == c)).sum()) for c in (1, 0)]
                             for t in (1, 0)]
  return out


@pytest.mark.parametrize("seed", range(5))
def test_scores_equal_their_definitions(seed):
  rng = np.random.default_rng(seed)
  n = int(rng.integers(20, 200))
  labels = (rng.random(n) < rng.uniform(0.2, 0.8)).astype(int)
  # Informative but imperfect probabilities, rounded so that ties occur (and 0.5 exactly).
  p = np.round(np.clip(0.5 + (labels - 0.5) * rng.uniform(0, 0.6) + rng.normal(0, 0.25, n), 0, 1), 1)
  got, want = scores.classification_scores(labels, p), reference(labels, p)
  assert got["Confusion matrix"] == want["Confusion matrix"]
  for name in (*scores.METRICS, "ROC AUC"):
    assert got[name] == pytest.approx(want[name], abs=1e-12), name
  assert 0 < got["F1 (macro)"] < 1 and 0.5 < got["ROC AUC"] < 1


def test_degenerate_sets():
  # Everything called pcRNA: ncRNA's precision is 0/0, reported as 0 (scikit-learn's default).
  got = scores.classification_scores(np.array([1, 0, 1, 1]), np.ones(4))
  assert got["Precision (ncRNA)"] == 0.0 and got["F1 (macro)"] == pytest.approx(3 / 7)
  assert got["Confusion matrix"] == [[3, 0], [1, 0]]
  assert np.isnan(scores.classification_scores(np.ones(3), np.ones(3))["ROC AUC"])  # one class
  assert "F1 (macro)         1.0000" in scores.describe(
      scores.classification_scores(np.array([1, 0]), np.array([0.9, 0.1])))
