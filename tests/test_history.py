"""history.csv counts epochs as the log does; the progress line shows on terminals only."""

import io

from nlm_jax import history

ROW = {c: 0.5 for c in history.COLUMNS}


def test_csv_counts_epochs_from_one_and_reads_back(tmp_path):
  rows = [dict(ROW, **{"Loss|train": 1.25}), dict(ROW, **{"Accuracy|valid": 0.375})]
  path = tmp_path / "history.csv"
  history.write_csv(path, rows)
  lines = path.read_text().splitlines()
  assert lines[0] == ("Epoch,Loss|train,Accuracy|train,NucAccuracy|train,Loss|valid,"
                      "Accuracy|valid,NucAccuracy|valid")
  assert lines[1] == "1,1.250000,0.500000,0.500000,0.500000,0.500000,0.500000"
  assert lines[2].startswith("2,") and len(lines) == 3
  assert history.read_csv(path) == rows


class Terminal(io.StringIO):
  def isatty(self):
    return True


class Clock:
  def __init__(self):
    self.t = 0.0

  def __call__(self):
    return self.t


def test_progress_line_shows_steps_rate_and_time_left_on_a_terminal():
  out, clock = Terminal(), Clock()
  line = history.ProgressLine(stream=out, every=0.5, clock=clock)
  line.start("epoch 2/5", first=100, total=1250)  # resumed at step 100
  clock.t = 0.4
  line.update(101)  # within `every` of the start: nothing yet
  assert out.getvalue() == ""
  clock.t = 10.0
  line.update(600)  # 500 steps in 10 s: 650 left take 13 s
  assert out.getvalue() == "\r\x1b[Kepoch 2/5 | step 600/1,250 | 50 steps/s | 0:00:13 left"
  clock.t = 10.2
  before = out.getvalue()
  line.update(610)  # within `every` of the last: not written
  assert out.getvalue() == before
  line.note("evaluating")
  assert out.getvalue().endswith("\r\x1b[Kepoch 2/5 | evaluating")
  line.clear()
  assert out.getvalue().endswith("evaluating\r\x1b[K")


def test_progress_line_is_silent_off_a_terminal_or_when_turned_off():
  for out, on in ((io.StringIO(), True), (Terminal(), False)):
    line = history.ProgressLine(on=on, stream=out)
    line.start("epoch 1/1", first=0, total=10)
    line.update(5)
    line.note("evaluating")
    line.clear()
    assert out.getvalue() == "" and not line.due()


def epoch_line(caplog, chip_peak_flops):
  """The log line of one epoch of 10 steps of 1e9 FLOP each in 1 s (1e10 FLOP/s)."""
  import logging

  report = history.EpochReport(None, 1, 0, 8, 9, ("Loss",), ("Loss|valid",), 1e9, 4e10, False,
                               chip_peak_flops)
  report.start_epoch(0, 0, 10)
  report.epoch_start -= 1.0  # the steps took 1 s
  report.evaluating()
  report.saving()
  with caplog.at_level(logging.INFO, logger="nlm_jax.history"):
    report.end_epoch(0, [{"Loss|valid": 1.0}], True, {"sequences": 80, "real_nucleotides": 720},
                     1e-4)
  return caplog.records[-1].getMessage()


def test_epoch_line_states_mfu_against_the_chip_and_the_measured_peak(caplog):
  # 1e10 FLOP/s against a chip peak of 1e11 (10%) and a measured rate of 4e10 (25%).
  line = epoch_line(caplog, 1e11)
  assert "MFU 10.0% (25.0% of measured peak)" in line, line
  # A device kind without a known peak: the measured rate alone, and it says so.
  caplog.clear()
  line = epoch_line(caplog, None)
  assert "MFU 25.0% of measured peak |" in line, line


def test_epoch_line_gives_the_share_outside_the_steps(caplog):
  import re

  line = epoch_line(caplog, None)
  share = float(re.search(r"([\d.]+)% of the epoch outside steps", line).group(1))
  # The steps took 1 s of the epoch, evaluation, checkpoint and reports next to nothing.
  assert 0 <= share < 5, line


def test_plots_mark_whole_epochs_only():
  import matplotlib.pyplot as plt

  for n in (2, 3, 7, 20):  # matplotlib's own ticks for 1..2 and 1..3 fall on 1.25, 2.5, ...
    fig = history.figure([ROW] * n, "Loss")
    ticks = [t for t in fig.axes[0].get_xticks() if 1 <= t <= n]
    plt.close(fig)
    assert ticks and all(t == int(t) for t in ticks), (n, ticks)
