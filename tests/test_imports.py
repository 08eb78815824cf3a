"""The package's modules form a stack: no module imports one that imports it back."""

import ast
import glob
import os

PACKAGE = os.path.join(os.path.dirname(__file__), "..", "nlm_jax")


def imports(path: str) -> set[str]:
  """The nlm_jax modules `path` imports anywhere in it, inside functions too."""
  found = set()
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.Import):
      found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("nlm_jax.")}
    elif isinstance(node, ast.ImportFrom) and node.module == "nlm_jax":
      found |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("nlm_jax."):
      found.add(node.module.split(".")[1])
  return found


def graph() -> dict[str, set[str]]:
  paths = glob.glob(os.path.join(PACKAGE, "*.py"))
  names = {os.path.basename(p)[:-3] for p in paths}
  return {os.path.basename(p)[:-3]: imports(p) & names - {"__init__"} for p in paths}


def cycle(g: dict[str, set[str]]) -> list[str] | None:
  """One import cycle of `g` as [a, b, ..., a], or None (depth-first search)."""
  state: dict[str, int] = {}  # 1: on the current path, 2: finished
  path: list[str] = []

  def visit(m):
    state[m] = 1
    path.append(m)
    for n in sorted(g.get(m, ())):
      if state.get(n) == 1:
        return path[path.index(n):] + [n]
      if n not in state and (found := visit(n)):
        return found
    path.pop()
    state[m] = 2
    return None

  for m in sorted(g):
    if m not in state and (found := visit(m)):
      return found
  return None


def test_the_finder_finds_a_cycle():
  assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle():
  g = graph()
  assert {"train", "config", "checkpoint", "fasta"} <= set(g)
  assert cycle(g) is None, f"import cycle: {' -> '.join(cycle(g))}; move what both need to a lower module"
