"""history.csv and the loss and accuracy plots, rewritten after every epoch, and the
progress line inside an epoch. Epochs are counted from 1 everywhere: the log, history.csv,
the plots and TensorBoard."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from typing import Callable, TextIO

from nlm_jax.errors import UserError

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
  """lncRNA-Py's format (values as %.6f); by default its four pre-training columns and the
  two NucAccuracy columns. The first column is the epoch, counted from 1 as in the log
  (lncRNA-Py's unnamed index counted from 0)."""
  def write(tmp):
    with open(tmp, "w") as f:
      f.write("Epoch," + ",".join(columns) + "\n")
      for epoch, row in enumerate(rows, 1):
        f.write(f"{epoch}," + ",".join(f"{row[c]:.6f}" for c in columns) + "\n")
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


def duration(seconds: float) -> str:
  m, s = divmod(int(seconds), 60)
  h, m = divmod(m, 60)
  return f"{h}:{m:02d}:{s:02d}"


class ProgressLine:
  """The progress of an epoch on a terminal, one line rewritten in place on `stream`
  (stderr): steps done, steps/s and the time left. Silent when `stream` is not a
  terminal (a log file keeps only the epoch lines) or when turned off (--noprogress)."""

  def __init__(self, on: bool = True, stream: TextIO | None = None, every: float = 0.5,
               clock: Callable[[], float] = time.monotonic):
    self.stream = stream or sys.stderr
    self.on = on and self.stream.isatty()
    self.every, self.clock = every, clock
    self.shown = False
    self.last = -float("inf")

  def start(self, title: str, first: int, total: int) -> None:
    """A new epoch: `title` (e.g. "epoch 3/20"), steps `first`..`total` still to train."""
    self.title, self.first, self.total = title, first, total
    self.began = self.last = self.clock()  # the first line after `every`: a rate to show

  def due(self) -> bool:
    """Whether `update` would write now (callers skip counting finished steps otherwise)."""
    return self.on and self.clock() - self.last >= self.every

  def update(self, done: int) -> None:
    """`done` of the epoch's `total` steps are finished."""
    if not self.due():
      return
    now = self.last = self.clock()
    rate = (done - self.first) / max(now - self.began, 1e-9)
    left = (self.total - done) / rate if rate > 0 else float("nan")
    self._write(self._fields(done, rate, left))

  def _fields(self, done: int, rate: float, left: float) -> list[str]:
    """What the line shows: one place, so a new figure is one more item here."""
    return [self.title, f"step {done:,}/{self.total:,}", f"{rate:.3g} steps/s",
            f"{duration(left)} left" if left == left else "-:--:-- left"]

  def note(self, text: str) -> None:
    """A phase without steps (evaluation): shown at once."""
    if self.on:
      self._write([self.title, text])

  def clear(self) -> None:
    """Removes the line, before a log line is written in its place."""
    if self.on and self.shown:
      self.stream.write("\r\x1b[K")
      self.stream.flush()
      self.shown = False

  def _write(self, fields: list[str]) -> None:
    width = shutil.get_terminal_size().columns - 1  # a wrapped line would not be rewritten
    self.stream.write("\r\x1b[K" + " | ".join(fields)[:width])
    self.stream.flush()
    self.shown = True
