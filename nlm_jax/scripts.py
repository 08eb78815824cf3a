"""The console scripts that `pip install` puts beside `python` (pyproject.toml's
[project.scripts]): `nlm-pretrain ARGS` is `python -m nlm_jax.pretrain ARGS`, and so on.
Each runs its module as `python -m` would, so there is one entry point per command."""

from __future__ import annotations

import runpy
import sys

COMMANDS = ("pretrain", "finetune", "classify", "embed", "export", "bpe", "synthetic")


def _run(command: str) -> None:
  sys.argv[0] = f"nlm-{command}"
  runpy.run_module(f"nlm_jax.{command}", run_name="__main__", alter_sys=True)


def pretrain() -> None:
  _run("pretrain")


def finetune() -> None:
  _run("finetune")


def classify() -> None:
  _run("classify")


def embed() -> None:
  _run("embed")


def export() -> None:
  _run("export")


def bpe() -> None:
  _run("bpe")


def synthetic() -> None:
  _run("synthetic")
