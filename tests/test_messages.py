"""Every error message names only flags of the command that prints it.

Two walks. The static one reads every string of the package's modules (docstrings
aside): each `--flag` it names must be a flag of some command, and in the modules and
functions whose messages a known set of commands print (REACH) a flag of each of them.
The dynamic one is in test_bad_input.assert_one_line_error: every error line that the
catalogue's cases make a command print is checked against that command's flags
(`flags_of`). The flags of a command are what its --helpfull lists.
"""

import ast
import functools
import glob
import os
import re

import pytest

from conftest import run_command

PACKAGE = os.path.join(os.path.dirname(__file__), "..", "nlm_jax")
COMMANDS = ("pretrain", "finetune", "embed", "classify", "export", "bpe")
TOOLS = ("bench.py", "bench_fasta.py", "bench_peer.py", "device_check.py", "peer.py",
         "synthetic.py")  # commands of their own
MODEL_READERS = ("pretrain", "finetune", "embed", "classify", "export")  # and nlm_jax.load
FASTA_READERS = ("pretrain", "finetune", "embed", "classify", "bpe")
# Where the messages of a module, or of one function in it, can be printed.
REACH = {
    "pretrain.py": ("pretrain",), "finetune.py": ("finetune",), "embed.py": ("embed",),
    "classify.py": ("classify",), "export.py": ("export",), "bpe.py": ("bpe",),
    "cli.py": COMMANDS, "errors.py": COMMANDS, "outputs.py": COMMANDS,
    "fasta.py": FASTA_READERS, "filecache.py": FASTA_READERS,
    "folders.py": MODEL_READERS, "layout.py": MODEL_READERS,
    ("folders.py", "_token_encoding"): ("pretrain", "finetune", "embed", "classify"),
    # Its default names --init_from; finetune passes --pretrained_model.
    ("folders.py", "with_architecture_of"): ("pretrain",),
    ("outputs.py", "check_file"): ("embed", "classify"),
    ("checkpoint.py", "restore"): MODEL_READERS, ("checkpoint.py", "_restore_best"): MODEL_READERS,
    ("checkpoint.py", "_check_shapes"): MODEL_READERS,
    "encodings.py": ("pretrain", "finetune", "embed", "classify"),
    "pretrained.py": ("embed", "classify"),
    ("command.py", "from_flags"): ("pretrain",),
    ("command.py", "from_finetune_flags"): ("finetune",),
    ("command.py", "check_data"): ("pretrain", "finetune"),
    ("command.py", "check_parameters_fit"): ("pretrain", "finetune"),
}
NO_MESSAGES = {("config.py", "exp_name"), ("config.py", "_cls_name_tail")}  # name suffixes
FLAG = re.compile(r"(?<![\w-])--(?:no)?(\w+)(?![\w-])")


@functools.cache
def flags_of(command: str) -> frozenset[str]:
  """The flags `python -m nlm_jax.<command> --helpfull` lists (absl's own included)."""
  proc = run_command(f"nlm_jax.{command}", PACKAGE, "--helpfull", timeout=120)
  assert "--flagfile" in proc.stdout, proc.stderr[-2000:]  # absl ends --helpfull with status 1
  return frozenset(m[1] for m in re.finditer(r"--(?:\[no\])?(\w+)", proc.stdout))


def named_flags(line: str) -> list[str]:
  """The flags a message names; `--nox` names the boolean x."""
  return FLAG.findall(line)


def strings(path: str) -> list[tuple[str | None, str]]:
  """(enclosing function, text) of every string constant in the module but docstrings."""
  tree = ast.parse(open(path).read())
  docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef)) and n.body
                and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
  out = []

  def visit(node, function):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      function = node.name
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
      out.append((function, node.value))
    for child in ast.iter_child_nodes(node):
      visit(child, function)

  visit(tree, None)
  return out


def test_named_flags_reads_boolean_and_plain_flags():
  assert named_flags("add --overwrite, drop --noinput_linear; not x--y nor --local-dir") == [
      "overwrite", "input_linear"]


@pytest.fixture(scope="module")
def all_flags():
  return {c: flags_of(c) for c in COMMANDS}


def test_every_message_names_flags_of_the_commands_that_print_it(all_flags):
  anywhere = frozenset().union(*all_flags.values())
  wrong = []
  for path in sorted(glob.glob(os.path.join(PACKAGE, "*.py"))):
    module = os.path.basename(path)
    if module in TOOLS:
      continue
    for function, text in strings(path):
      if (module, function) in NO_MESSAGES:
        continue
      reach = REACH.get((module, function), REACH.get(module, ()))
      for name in named_flags(text):
        if name not in anywhere:
          wrong.append(f"{module}:{function}: --{name} is a flag of no command: {text!r}")
        for command in reach:
          if name not in all_flags[command]:
            wrong.append(f"{module}:{function}: --{name} is no flag of {command}: {text!r}")
  assert not wrong, "\n".join(wrong)


def test_the_walk_finds_a_flag_of_another_command(tmp_path, all_flags):
  """The walk itself: a message of export that names pretrain's --fresh is found."""
  assert "fresh" in all_flags["pretrain"] and "fresh" not in all_flags["export"]
  (tmp_path / "export.py").write_text('def f():\n  raise UserError("start anew with --fresh")\n')
  found = [name for function, text in strings(str(tmp_path / "export.py"))
           for name in named_flags(text) if name not in all_flags["export"]]
  assert found == ["fresh"]
