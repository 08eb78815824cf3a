"""What the command-line entry points share: bad input ends in one line on stderr and
exit status 2, never a traceback."""

from __future__ import annotations

import logging
import sys
from typing import Callable

from absl import app
from absl import flags
from absl import logging as absl_logging

from nlm_jax.config import UserError


def fail(prog: str, message: str) -> None:
  print(f"{prog}: error: {message}", file=sys.stderr)
  sys.exit(2)


def flags_parser(prog: str) -> Callable[[list[str]], list[str]]:
  """absl's parser, with flag errors (unknown flag, bad value) as one line."""

  def parse(argv: list[str]) -> list[str]:
    try:
      return flags.FLAGS(argv)
    except flags.Error as e:
      fail(prog, f"{str(e).replace('ERROR:: ', '')} (see --helpfull for every flag).")

  return parse


def is_ours(record: logging.LogRecord) -> bool:
  """A record of nlm_jax's own loggers (`logging.getLogger(__name__)` in its modules).
  Judged by the logger's name, never by the file's path: in a clone named nlm_jax with
  the venv inside it, every library's path holds "nlm_jax" too."""
  return record.name == "nlm_jax" or record.name.startswith("nlm_jax.")


def quiet_libraries(level: int = logging.WARNING) -> None:
  """Log lines from nlm_jax; from the libraries (orbax is chatty) only from `level` up."""
  absl_logging.get_absl_handler().addFilter(lambda r: r.levelno >= level or is_ours(r))


def run(main: Callable[[list[str]], None], prog: str,
        parser: Callable[[list[str]], list[str]] | None = None) -> None:
  """app.run(main) with UserError as one line and exit status 2, library logs at ERROR."""

  def guarded(argv: list[str]) -> None:
    quiet_libraries(logging.ERROR)
    try:
      main(argv)
    except UserError as e:
      fail(prog, str(e))

  app.run(guarded, flags_parser=parser or flags_parser(prog))
