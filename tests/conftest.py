"""Test set-up: 8 fake CPU devices (set before JAX starts) and generated FASTA files."""

import atexit
import os
import shutil
import tempfile

# The commands the tests run share one compilation cache, never the user's (~/.cache).
os.environ["NLM_JAX_COMPILATION_CACHE"] = tempfile.mkdtemp(prefix="nlm_jax_test_xla_cache_")
atexit.register(shutil.rmtree, os.environ["NLM_JAX_COMPILATION_CACHE"], ignore_errors=True)
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()

import numpy as np
import pytest

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared")


def write_fasta(path, seqs, prefix="seq"):
  with open(path, "w") as f:
    for i, s in enumerate(seqs):
      f.write(f">{prefix}_{i}\n{s}\n")
  return str(path)


def random_seqs(n, min_len, max_len, seed=0):
  rng = np.random.default_rng(seed)
  return ["".join(rng.choice(list("ACGT"), rng.integers(min_len, max_len + 1))) for _ in range(n)]


def shared_path(*parts):
  """A file of ../shared/data, or a skip when ../shared is absent."""
  path = os.path.join(SHARED, *parts)
  if not os.path.exists(path):
    pytest.skip(f"{path} is absent")
  return path
