"""Every command's --help: exit status 0, the flags grouped as lncRNA-Py's scripts group
them, as they are typed, without paths of this machine; and the console scripts that
`pip install` puts beside python."""

import importlib.metadata
import os
import re
import subprocess
import sys

import pytest

from conftest import run_command
from nlm_jax import scripts

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
GROUPS = {"pretrain": ["data", "architecture", "training", "nlm_jax's own"],
          "finetune": ["data", "architecture", "training", "nlm_jax's own"],
          "classify": ["architecture", "classification", "nlm_jax's own"],
          "embed": ["architecture", "embeddings", "nlm_jax's own"],
          "export": ["output"], "bpe": ["data", "nlm_jax's own"], "synthetic": ["data"]}


def headings(text):
  return [line[:-1] for line in text.splitlines() if re.fullmatch(r"[\w' ]+:", line)]


@pytest.mark.parametrize("command", scripts.COMMANDS)
def test_help_exits_0_with_the_flags_grouped(command, tmp_path):
  proc = run_command(f"nlm_jax.{command}", tmp_path, "--help", timeout=120)
  out = proc.stdout
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert headings(out) == GROUPS[command], out
  assert "--flagfile" in out and "--help" in out
  assert not re.search(r"--\[no\]no_|--nono_", out), out  # no double negations
  for path in {ROOT, os.path.dirname(ROOT), os.path.expanduser("~"), sys.prefix, str(tmp_path)}:
    assert path not in out, path
  if command in ("pretrain", "finetune"):
    assert "  --no_input_relu  (default: off)" in out and "  --noprogress  (default: --progress)" in out
    assert "  --encoding_method=conv|bpe|kmer|nuc  (default: conv)" in out
    architecture = out.split("\narchitecture:\n")[1].split("\ntraining:\n")[0]
    assert "--d_model=" in architecture and "--seed=" not in architecture
  if command == "finetune":
    help_of = " ".join(out.split("--pretrained_model=")[1].split("\n  --")[0].split())
    assert "--context_length decides the context" in help_of and "Hugging Face hub id" in help_of
    assert "lncRNA-Py's save_pretrained" in help_of


def test_console_scripts_are_installed_and_run_the_modules(tmp_path):
  scripts_of = {e.name: e.value for e in importlib.metadata.entry_points(group="console_scripts")
                if e.value.startswith("nlm_jax.")}
  assert scripts_of == {f"nlm-{c}": f"nlm_jax.scripts:{c}" for c in scripts.COMMANDS}
  script = os.path.join(os.path.dirname(sys.executable), "nlm-pretrain")
  assert os.access(script, os.X_OK), "run pip install -e . again: the console scripts are missing"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  proc = subprocess.run([script, "--help"], capture_output=True, text=True, env=env, timeout=120,
                        cwd=tmp_path)
  module = run_command("nlm_jax.pretrain", tmp_path, "--help", timeout=120)
  assert proc.returncode == 0 and proc.stdout == module.stdout, proc.stderr[-2000:]
  # A bad flag: the same one line and status as python -m.
  proc = subprocess.run([script, "--no_such_flag"], capture_output=True, text=True, env=env,
                        timeout=120, cwd=tmp_path)
  assert proc.returncode == 2 and proc.stderr.startswith("nlm_jax.pretrain: error: "), proc.stderr
