"""history.csv and the loss and accuracy plots, rewritten after every epoch."""

from __future__ import annotations

import contextlib
import os

from nlm_jax.config import UserError

# NucAccuracy: per-nucleotide accuracy, comparable across encodings (= Accuracy for conv).
COLUMNS = ("Loss|train", "Accuracy|train", "NucAccuracy|train",
           "Loss|valid", "Accuracy|valid", "NucAccuracy|valid")


def _replace(path: str, write) -> None:
  """Writes through a temporary file, so a kill never leaves a half-written file; a failed
  write (full disk) removes it and is one line."""
  tmp = f"{path}.tmp"
  try:
    write(tmp)
    os.replace(tmp, path)
  except OSError as e:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise UserError(f"writing {path!r} failed ({e.strerror or e}): free disk space or choose "
                    "a writable --results_dir, then run the same command to resume.") from None


def write_csv(path: str, rows: list[dict[str, float]], columns: tuple[str, ...] = COLUMNS) -> None:
  """lncRNA-Py's format (an unnamed 0-based index column, values as %.6f); by default its
  four pre-training columns and the two NucAccuracy columns."""
  def write(tmp):
    with open(tmp, "w") as f:
      f.write("," + ",".join(columns) + "\n")
      for i, row in enumerate(rows):
        f.write(f"{i}," + ",".join(f"{row[c]:.6f}" for c in columns) + "\n")
  _replace(path, write)


def read_csv(path: str) -> list[dict[str, float]]:
  with open(path) as f:
    header = f.readline().rstrip("\n").split(",")[1:]
    return [dict(zip(header, map(float, line.rstrip("\n").split(",")[1:]))) for line in f]


def file_name(metric: str) -> str:
  """"F1 (macro)" -> "f1_macro", "Accuracy" -> "accuracy"."""
  return "_".join("".join(c if c.isalnum() else " " for c in metric.lower()).split())


def plot(folder: str, rows: list[dict[str, float]],
         metrics: tuple[str, ...] = ("Loss", "Accuracy", "NucAccuracy")) -> None:
  """One plot per metric (loss.png, accuracy.png, nucaccuracy.png for pre-training;
  f1_macro.png, precision_pcrna.png, ... for fine-tuning): training and validation
  curves over epochs 1..E."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  epochs = range(1, len(rows) + 1)
  for metric in metrics:
    fig, ax = plt.subplots(figsize=(6, 4))
    for split, label in (("train", "Training"), ("valid", "Validation")):
      ax.plot(epochs, [r[f"{metric}|{split}"] for r in rows], marker=".", label=label)
    ax.set_xlabel("Epoch")
    ax.set_ylabel(metric)
    ax.legend()  # best placement: a figure legend covered the ends of the curves
    fig.tight_layout()
    _replace(os.path.join(folder, f"{file_name(metric)}.png"),
             lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
