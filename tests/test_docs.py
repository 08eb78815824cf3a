"""The README is the front door: short, its test command the one CI runs, every page of
docs/ linked from it, and every relative link in README and docs/ leads to a file (and a
heading) that exists."""

import glob
import os
import re

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")
PAGES = sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
LINK = re.compile(r"\]\(([^)\s]+)\)")


def read(path):
  with open(path) as f:
    return f.read()


def slug(heading):
  """GitHub's anchor for a heading."""
  return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path):
  text = re.sub(r"```.*?```", "", read(path), flags=re.S)
  return {slug(m) for m in re.findall(r"^#+ (.*)$", text, re.M)}


def test_readme_is_short_and_its_test_command_is_the_one_ci_runs():
  readme = read(os.path.join(ROOT, "README.md"))
  assert len(readme.splitlines()) <= 250
  ci = read(os.path.join(ROOT, ".ci", "run")).strip().splitlines()[-1]
  assert ci.startswith("python3 -m venv .venv") and ci in readme
  assert "source .venv/bin/activate" in readme


def test_every_docs_page_is_linked_from_the_readme():
  readme = read(os.path.join(ROOT, "README.md"))
  assert PAGES
  for page in PAGES:
    assert f"](docs/{os.path.basename(page)})" in readme, page


@pytest.mark.parametrize("path", [os.path.join(ROOT, "README.md"), *PAGES],
                         ids=lambda p: os.path.relpath(p, ROOT))
def test_relative_links_lead_somewhere(path):
  for target in LINK.findall(read(path)):
    if re.match(r"[a-z]+:", target):
      continue  # a web address
    file, _, anchor = target.partition("#")
    full = os.path.normpath(os.path.join(os.path.dirname(path), file)) if file else path
    assert os.path.exists(full), f"{os.path.relpath(path, ROOT)} links to missing {target}"
    if anchor:
      assert anchor in anchors(full), f"{os.path.relpath(path, ROOT)}: no heading for #{anchor}"
