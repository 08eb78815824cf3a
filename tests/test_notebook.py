"""launch/colab.ipynb runs top to bottom: its code cells, as IPython would run them outside
Colab (shell lines `!cmd {expr}` through a fork of the kernel, as IPython's), with 2 epochs
instead of 20, from launch/ (where a local Jupyter opened on the file starts). Its first two
epochs are the demo's: launch/demo.flags's stated figures for them are checked here."""

import csv
import json
import os
import re
import shutil
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(__file__), "..")
NOTEBOOK = os.path.join(ROOT, "launch", "colab.ipynb")


def notebook_script(path, parameters):
  """The code cells as one script: `!` lines become shell calls with IPython's {expr}
  expansion; `parameters` is appended to the cell tagged "parameters" (papermill's way)."""
  with open(path) as f:
    nb = json.load(f)
  assert nb["nbformat"] == 4
  # IPython forks the kernel (pexpect) for `!`: a preexec_fn makes subprocess fork through
  # Python's at-fork handlers too, so JAX's fork warning shows as it would in the notebook.
  lines = ["import subprocess as _subprocess",
           "def _shell(command):",
           "  print('$', command, flush=True)",
           "  _subprocess.run(command, shell=True, check=True, preexec_fn=lambda: None)"]
  for cell in nb["cells"]:
    if cell["cell_type"] != "code":
      continue
    source = "".join(cell["source"])
    if "parameters" in cell["metadata"].get("tags", []):
      source += "\n" + parameters
    for line in source.splitlines():
      body = line.lstrip()
      indent = line[:len(line) - len(body)]
      assert not body.startswith("%"), f"magics do not run outside IPython: {line}"
      lines.append(f"{indent}_shell(f{body[1:]!r})" if body.startswith("!") else line)
  return "\n".join(lines) + "\n"


def test_notebook_runs_top_to_bottom_on_cpu_from_launch(tmp_path):
  # A checkout as the notebook sees it: launch/demo.flags marks the repository root.
  launch = tmp_path / "repo" / "launch"
  os.makedirs(launch)
  shutil.copy(os.path.join(ROOT, "launch", "demo.flags"), launch)
  (launch / "notebook.py").write_text(notebook_script(NOTEBOOK, "EPOCHS = 2"))
  env = dict(os.environ, MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run([sys.executable, "notebook.py"], cwd=launch, env=env,
                        capture_output=True, text=True, timeout=600)
  out = proc.stdout + proc.stderr
  assert proc.returncode == 0, out[-4000:]
  assert f"nlm_jax repository: {tmp_path / 'repo'}" in out, out[-4000:]
  assert "epoch 2/2" in out, out[-4000:]
  assert "os.fork() was called" not in out, out[-4000:]  # the commands run without a fork
  accuracy = float(out.split("masked-nucleotide accuracy ")[1].split()[0])
  assert accuracy > 0.3, out[-2000:]  # above chance after 2 epochs of the demo
  separation = float(out.split("transcripts vs shuffled: ")[1].split()[0])
  assert 0.0 <= separation <= 1.0
  # Everything lands in the repository root, nothing in launch/.
  assert sorted(os.listdir(launch)) == ["demo.flags", "notebook.py"]
  repo = tmp_path / "repo"
  assert (repo / "valid_embeddings.npz").is_file()
  assert (repo / "exported" / "DEMO_conv_nm64_sm9_dm64_N2_h4_bs16_ws300_cl64_d0" /
          "model.safetensors").is_file()
  # The demo's stated figures for the epochs this run trained (launch/demo.flags).
  with open(repo / "results" / "DEMO_conv_nm64_sm9_dm64_N2_h4_bs16_ws300_cl64_d0" / "history.csv") as f:
    history = list(csv.DictReader(f))
  stated = stated_figures(os.path.join(ROOT, "launch", "demo.flags"))
  checked = [(epoch, low, high) for epoch, low, high in stated if epoch <= len(history)]
  assert len(checked) == 2, stated
  for epoch, low, high in checked:
    value = float(history[epoch - 1]["Accuracy|valid"])
    assert low <= value <= high, (f"launch/demo.flags states Accuracy|valid {low}-{high} after "
                                  f"epoch {epoch}; the demo gave {value:.4f}: update the comment "
                                  "(and docs/benchmarks.md) if the change is meant")


def stated_figures(path):
  """The (epoch, low, high) of each "Accuracy|valid LOW-HIGH after epoch N" that a flag
  file's comments state."""
  with open(path) as f:
    comments = " ".join(line[1:].strip() for line in f if line.startswith("#"))
  return [(int(n), float(low), float(high)) for low, high, n in
          re.findall(r"Accuracy\|valid (0\.\d+)-(0\.\d+) after epoch (\d+)", comments)]
