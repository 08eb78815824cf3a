"""The error every module may raise for bad input: the lowest room of the house, so that
data, model and checkpoint code need not import the configuration to report a problem.
Also what an operating system's refusal to write means, for every module that writes."""

import resource


class UserError(Exception):
  """Bad input from the user: reported as one line, without a traceback."""


# How each limit reads in errno texts, tensorstore's and orbax's messages.
_FILE_TOO_LARGE = ("File too large", "[Errno 27]", "os_error_code='27'", "os_error_code=27")
_TOO_MANY_FILES = ("Too many open files", "[Errno 24]", "[Errno 23]", "os_error_code='24'",
                   "os_error_code=24")


def limit_reached(text: str) -> str | None:
  """The resource limit that an error's text says the process ran into, as a sentence that
  names it and its fix, or None."""
  if any(s in text for s in _FILE_TOO_LARGE):
    size = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    now = "unlimited" if size == resource.RLIM_INFINITY else f"{size // 1024} KiB"
    return (f"a file reached this process's file-size limit ({now}; ulimit -f): raise it "
            "(ulimit -f unlimited), then run the same command again")
  if any(s in text for s in _TOO_MANY_FILES):
    files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return (f"this process ran out of open files (its limit: {files}; ulimit -n): raise it "
            "(ulimit -n 4096), then run the same command again")
  return None


def cannot_write(what: str, error: BaseException, fix: str) -> UserError:
  """The one line for a write that failed: the limit it ran into and how to raise it, or
  else `fix` (free disk space, another folder)."""
  why = (error.strerror if isinstance(error, OSError) and error.strerror
         else (str(error).strip().splitlines() or [type(error).__name__])[0][:200])
  return UserError(f"writing {what} failed ({why}): {limit_reached(str(error)) or fix}.")
