"""Runs the commands (`python -m nlm_jax.<command> ARGS`) for the tests, each in a process of
its own, without paying Python's start and JAX's import (~3 s on 2 CPU cores) each time.

A server (this file, run as a script) imports what the commands import, then forks one
child per command. The child takes the command's working folder, environment and standard
streams (stdout and stderr to files, stdin from /dev/null) and runs the module as
`python -m` does (runpy, as __main__); whatever it raises reaches the top of this script,
so the interpreter ends the child as it ends `python -m`: a traceback and status 1 for an
uncaught exception, SystemExit's status, atexit handlers. The server was started with
mimalloc preloaded, so the command's allocator.preload() finds it loaded and goes on
instead of re-executing itself.

What a child does not repeat is what happens before the command's own code runs: Python's
start, the re-exec and the imports (anything they print). The tests that run a command
afresh (`run_module(..., fresh=True)`) keep that covered, and check that a fresh process
and a forked one write the same.

Protocol: one JSON request per line on stdin ({"module", "args", "cwd", "env", "out",
"err", and optionally "limits": {"RLIMIT_...": [soft, hard]}}), answered by two JSON lines on stdout: {"pid"} when the child is forked and
{"status"} (os.waitstatus_to_exitcode) when it has ended.
"""

import gc
import json
import os
import resource
import runpy
import sys

# What the commands import before they do anything that can fail. No entry-point module
# (bpe, embed, finetune, pretrain, classify define flags when imported); nlm_jax.export,
# imported by nlm_jax.pretrained, is dropped in the child before it runs as __main__.
import nlm_jax.cli  # noqa: F401
import nlm_jax.command  # noqa: F401
import nlm_jax.pretrained  # noqa: F401 (JAX, flax, orbax, optax and nlm_jax.train)
import pyfastx  # noqa: F401
import sentencepiece  # noqa: F401

ENTRY_POINTS = ("nlm_jax.bpe", "nlm_jax.classify", "nlm_jax.embed", "nlm_jax.export",
                "nlm_jax.finetune", "nlm_jax.pretrain")
assert not [m for m in ENTRY_POINTS if m in sys.modules and m != "nlm_jax.export"]
PRELOADED = os.environ.get("LD_PRELOAD", "")


def reply(**message):
  os.write(1, (json.dumps(message) + "\n").encode())


def serve():
  """Forks a child per request; returns the request in the child, None at the end of input."""
  requests = os.fdopen(os.dup(0), "r")
  for line in requests:
    request = json.loads(line)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
      requests.close()
      return request
    reply(pid=pid)
    _, status = os.waitpid(pid, 0)
    reply(status=os.waitstatus_to_exitcode(status))
  return None


def become(request):
  """This process as `python -m` would start it: folder, environment, streams, argv."""
  os.chdir(request["cwd"])
  os.environ.clear()
  os.environ.update(request["env"])
  os.environ["LD_PRELOAD"] = PRELOADED  # as after allocator.preload()'s re-exec
  for fd, path, mode in ((0, os.devnull, os.O_RDONLY),
                         (1, request["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                         (2, request["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
    new = os.open(path, mode, 0o600)
    os.dup2(new, fd)
    os.close(new)
  sys.stdin = sys.__stdin__ = open(0, closefd=False)
  sys.path[0] = os.getcwd()  # `python -m` puts the working folder first, not tests/
  sys.argv = [request["module"], *request["args"]]  # runpy puts the module's path first
  for name, (soft, hard) in request.get("limits", {}).items():  # as `ulimit` before the command
    resource.setrlimit(getattr(resource, name), (soft, hard))
  if request["module"] == "nlm_jax.export":
    sys.modules.pop("nlm_jax.export", None)  # as in `python -m nlm_jax.export`: not imported yet


gc.freeze()  # else a child's collections touch, and so copy, every page of the imports
request = serve()
if request is not None:
  become(request)
  runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
