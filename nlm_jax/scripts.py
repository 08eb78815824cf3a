"""The console scripts that `pip install` puts beside `python` (pyproject.toml's
[project.scripts]): `nlm-pretrain ARGS` is `python -m nlm_jax.pretrain ARGS`, and so on.
Each runs its module as `python -m` would, so there is one entry point per command."""

from __future__ import annotations

import runpy
import sys
from typing import Callable

COMMANDS = ("pretrain", "finetune", "classify", "embed", "export", "bpe", "synthetic")


def _script(command: str) -> Callable[[], None]:
  def run() -> None:
    sys.argv[0] = f"nlm-{command}"
    runpy.run_module(f"nlm_jax.{command}", run_name="__main__", alter_sys=True)

  run.__name__ = run.__qualname__ = command
  return run


pretrain, finetune, classify, embed, export, bpe, synthetic = map(_script, COMMANDS)
