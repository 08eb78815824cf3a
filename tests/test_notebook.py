"""launch/colab.ipynb runs top to bottom: its code cells, as IPython would run them outside
Colab (shell lines `!cmd {expr}` through the shell), with 2 epochs instead of 20, from
launch/ (where a local Jupyter opened on the file starts)."""

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
