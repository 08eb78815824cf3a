"""What a run reports: history.csv, the plots and TensorBoard after every epoch, the
progress line inside an epoch and the epoch's log line, all from one place (EpochReport).
Epochs are counted from 1 everywhere: the log, history.csv, the plots and TensorBoard."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import time
from typing import Any, Callable, TextIO

from nlm_jax.errors import UserError

log = logging.getLogger(__name__)  # cli.quiet_libraries keeps nlm_jax's loggers
# The plots are drawn after an epoch once this long has passed since the start or the last
# drawing, and after the last epoch: with matplotlib they cost ~0.3-1 s, as much as a tiny
# model's epoch.
PLOT_EVERY_S = 60.0

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


def columns(figures: tuple[str, ...]) -> tuple[str, ...]:
  """history.csv's columns, as lncRNA-Py orders them: every figure on train, then on valid."""
  return tuple(f"{f}|{split}" for split in ("train", "valid") for f in figures)


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
  import matplotlib.pyplot as plt

  for metric in metrics:
    fig = figure(rows, metric)
    _replace(os.path.join(folder, f"{file_name(metric)}.png"),
             lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def figure(rows: list[dict[str, float]], metric: str) -> Any:
  """The figure of one metric: training and validation over epochs 1..E, ticks on whole
  epochs only."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib.ticker import MaxNLocator

  epochs = range(1, len(rows) + 1)
  fig, ax = plt.subplots(figsize=(6, 4))
  for split, label in (("train", "Training"), ("valid", "Validation")):
    ax.plot(epochs, [r[f"{metric}|{split}"] for r in rows], marker=".", label=label)
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  ax.set_xlabel("Epoch")
  ax.set_ylabel(metric)
  ax.legend()  # best placement: a figure legend covered the ends of the curves
  fig.tight_layout()
  return fig


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


class EpochReport:
  """Everything the reader sees of a run's epochs: the progress line while one trains, then
  the log line (every process) and history.csv, the plots and the TensorBoard scalars (the
  writing process: results_path set). Keeps the time an epoch spends in its training steps,
  evaluating, checkpointing and reporting: what is not steps is the epoch's overhead."""

  def __init__(self, results_path: str | None, epochs: int, first_epoch: int,
               samples_per_step: int, window: int,
               figures: tuple[str, ...], progress_columns: tuple[str, ...],
               flops_per_step: float, peak_flops: float, progress: bool,
               chip_peak_flops: float | None = None):
    self.results_path, self.epochs, self.first_epoch = results_path, epochs, first_epoch
    self.spe, self.samples_per_step, self.window = 0, samples_per_step, window
    self.figures, self.progress_columns = figures, progress_columns
    # peak_flops: the matmul rate measured on the device; chip_peak_flops: the chip's dense
    # peak (flops.chip_peak), which MFU is stated against where it is known.
    self.flops_per_step, self.peak_flops = flops_per_step, peak_flops
    self.chip_peak_flops = chip_peak_flops
    self.line = ProgressLine(progress and results_path is not None)
    self.tb = None
    if results_path is not None:
      from tensorboardX import SummaryWriter  # event files next to history.csv

      self.tb = SummaryWriter(results_path)
    self.seconds = {"training": 0.0, "evaluation": 0.0, "checkpoints": 0.0, "reports": 0.0}
    self.run_start = self.epoch_start = time.perf_counter()
    self.train_seconds, self.first_step = 0.0, 0
    self.eval_start = self.save_start = self.run_start
    self.plotted, self.plotted_at = 0, self.run_start

  def start_epoch(self, epoch: int, first_step: int, steps: int) -> None:
    """steps: the epoch's (with --packing they differ from epoch to epoch)."""
    self.epoch_start, self.first_step, self.spe = time.perf_counter(), first_step, steps
    self.line.start(f"epoch {epoch + 1}/{self.epochs}", first_step, self.spe)

  def step(self, step: int, not_ready: Callable[[], int]) -> None:
    """Step `step` was dispatched; not_ready() counts the dispatched steps not finished."""
    if self.line.due():
      self.line.update(step + 1 - not_ready())

  def evaluating(self) -> None:
    self.eval_start = time.perf_counter()
    self.train_seconds = self.eval_start - self.epoch_start
    self.line.note("evaluating")

  def saving(self) -> None:
    """The epoch's evaluation ended; its checkpoint is being saved."""
    self.save_start = time.perf_counter()

  def end_epoch(self, epoch: int, rows: list[dict[str, float]], improved: bool,
                train: dict[str, float], learning_rate: float) -> None:
    """rows: the history, this epoch's last; train: the sums of its steps (loss_sum, count,
    grad_norm, steps, real_nucleotides, sequences); learning_rate: of its last update."""
    reports_start = time.perf_counter()
    self.seconds["training"] += self.train_seconds
    self.seconds["evaluation"] += self.save_start - self.eval_start
    self.seconds["checkpoints"] += reports_start - self.save_start
    steps_per_s = (self.spe - self.first_step) / self.train_seconds
    throughput = {"steps_per_s": steps_per_s,
                  "samples_per_s": train["sequences"] / self.train_seconds,
                  "nucleotides_per_s": steps_per_s * self.samples_per_step * self.window,
                  # what other tools count: padding and a window's unused part excluded
                  "real_nucleotides_per_s": train["real_nucleotides"] / self.train_seconds,
                  "mfu": self.flops_per_step * steps_per_s / (self.chip_peak_flops or self.peak_flops),
                  "mfu_of_measured_peak": self.flops_per_step * steps_per_s / self.peak_flops}
    mfu = f"{100 * throughput['mfu_of_measured_peak']:.1f}% of measured peak"
    if self.chip_peak_flops:
      mfu = f"{100 * throughput['mfu']:.1f}% ({mfu})"
    if self.results_path is not None:
      write_csv(os.path.join(self.results_path, "history.csv"), rows, columns(self.figures))
      if epoch + 1 == self.epochs or time.perf_counter() - self.plotted_at >= PLOT_EVERY_S:
        self.plot(rows)
      self._scalars(epoch + 1, rows[-1], train, throughput, learning_rate)
    elapsed = time.perf_counter() - self.run_start
    left = elapsed / (epoch + 1 - self.first_epoch) * (self.epochs - epoch - 1)
    row = rows[-1]
    self.line.clear()
    now = time.perf_counter()
    self.seconds["reports"] += now - reports_start
    # What of the epoch's wall time was not its training steps: evaluation, checkpoint, reports.
    outside = 1 - self.train_seconds / (now - self.epoch_start)
    log.info("epoch %d/%d | %s%s | lr %.3g | %.1f steps/s, %.0f samples/s, %.3g nt/s (%.3g real "
             "nt/s), MFU %s | %.1f%% of the epoch outside steps | %s elapsed, %s left", epoch + 1,
             self.epochs, " ".join(f"{k} {row[k]:.4f}" for k in self.progress_columns),
             " (best)" if improved else "", learning_rate, steps_per_s,
             throughput["samples_per_s"], throughput["nucleotides_per_s"],
             throughput["real_nucleotides_per_s"], mfu, 100 * outside, duration(elapsed),
             duration(left))

  def _scalars(self, x: int, row: dict[str, float], train: dict[str, float],
               throughput: dict[str, float], learning_rate: float) -> None:
    for k, v in row.items():
      self.tb.add_scalar(k.replace("|", "/"), v, x)
    self.tb.add_scalar("train/batch_loss", train["loss_sum"] / max(train["count"], 1), x)
    self.tb.add_scalar("train/grad_norm", train["grad_norm"] / max(train["steps"], 1), x)
    self.tb.add_scalar("train/learning_rate", learning_rate, x)
    for k, v in throughput.items():
      self.tb.add_scalar(f"throughput/{k}", v, x)
    self.tb.flush()

  def plot(self, rows: list[dict[str, float]]) -> None:
    """Redraws the plots when epochs were added since they were last drawn."""
    if self.results_path is not None and len(rows) > self.plotted:
      plot(self.results_path, rows, self.figures)
      self.plotted, self.plotted_at = len(rows), time.perf_counter()

  def close(self) -> None:
    self.line.clear()
    if self.tb is not None:
      self.tb.close()

  def finish(self, best_metric: str, best: float, checkpoint_path: str) -> None:
    t = self.seconds
    log.info("training finished in %.1f s (training %.1f s, evaluation %.1f s, checkpoints %.1f s, "
             "reports %.1f s); best %s %.4f; checkpoint in %s", time.perf_counter() - self.run_start,
             t["training"], t["evaluation"], t["checkpoints"], t["reports"], best_metric, best,
             checkpoint_path)
