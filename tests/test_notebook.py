"""launch/colab.ipynb runs top to bottom: its code cells, as IPython would run them outside
Colab (shell lines `!cmd {expr}` through the shell), with 2 epochs instead of 20."""

import json
import os
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
  lines = ["import subprocess as _subprocess",
           "def _shell(command):",
           "  print('$', command, flush=True)",
           "  _subprocess.run(command, shell=True, check=True)"]
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


def test_notebook_runs_top_to_bottom_on_cpu(tmp_path):
  os.makedirs(tmp_path / "launch")
  shutil.copy(os.path.join(ROOT, "launch", "demo.flags"), tmp_path / "launch")
  (tmp_path / "notebook.py").write_text(notebook_script(NOTEBOOK, "EPOCHS = 2"))
  env = dict(os.environ, MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run([sys.executable, "notebook.py"], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=600)
  out = proc.stdout + proc.stderr
  assert proc.returncode == 0, out[-4000:]
  assert "epoch 2/2" in out, out[-4000:]
  accuracy = float(out.split("masked-nucleotide accuracy ")[1].split()[0])
  assert accuracy > 0.3, out[-2000:]  # above chance after 2 epochs of the demo
  separation = float(out.split("transcripts vs shuffled: ")[1].split()[0])
  assert 0.0 <= separation <= 1.0
  assert (tmp_path / "valid_embeddings.npz").is_file()
  assert (tmp_path / "exported" / "DEMO_conv_nm64_sm9_dm64_N2_h4_bs16_ws300_cl64_d0" /
          "model.safetensors").is_file()
