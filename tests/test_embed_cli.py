"""`python -m nlm_jax.embed` and `python -m nlm_jax.export`: the rows they write equal the
Python API's, and bad input is one line on stderr with nothing on disk changed."""

import gzip
import json
import os
import shutil

import jax
import numpy as np
import pytest

import nlm_jax
from conftest import random_seqs, write_fasta
from nlm_jax import train
from nlm_jax.config import Config
from test_bad_input import (assert_one_line_error, assert_same_as_fresh, assert_unchanged, fill,
                             run_module, small_disk, snapshot)

SMALL = dict(d_model=32, n_kernels=32, N=1, h=4, kernel_size=3, context_length=16,
             batch_size=8, warmup_steps=4, n_samples_per_epoch=32, encoder_dropout=0.0)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("model")
  t = write_fasta(tmp / "t.fa", random_seqs(30, 20, 100, seed=1))
  v = write_fasta(tmp / "v.fa", random_seqs(10, 20, 100, seed=2))
  cfg = Config(t, v, epochs=1, model_dir=str(tmp / "M"), results_dir=str(tmp / "R"), **SMALL)
  train.run(cfg, jax.devices()[:1])
  return cfg.checkpoint_path


def odd_records():
  """Lengths 1 to 300 (the window is 45 nt), lower case, U, IUPAC codes and a gap."""
  seqs = random_seqs(40, 1, 300, seed=3)
  seqs[1] = seqs[1].lower()
  seqs[2] = "ACGUUAGCRYN-.ACGT" * 5
  return seqs


def test_embed_writes_the_api_rows(model_dir, tmp_path):
  seqs = odd_records()
  write_fasta(tmp_path / "in.fa", seqs, "rec")
  (tmp_path / "in.fa.gz").write_bytes(gzip.compress((tmp_path / "in.fa").read_bytes()))
  proc = run_module("nlm_jax.embed", tmp_path, model_dir, "in.fa", "out.npz", "--pooling=max",
                    "--batch_size=8")
  assert proc.returncode == 0, proc.stderr
  assert "Traceback" not in proc.stderr
  assert "40/40 records" in proc.stdout  # the progress bar's last state
  z = np.load(tmp_path / "out.npz")
  assert list(z["ids"]) == [f"rec_{i}" for i in range(40)]
  np.testing.assert_array_equal(z["lengths"], [len(s) for s in seqs])
  api = nlm_jax.load(model_dir, devices=jax.devices()[:1]).embed(seqs, pooling="max")
  assert z["embeddings"].shape == (40, 32) and z["embeddings"].dtype == np.float32
  np.testing.assert_allclose(z["embeddings"], api, atol=1e-5)
  assert sorted(os.listdir(tmp_path)) == ["in.fa", "in.fa.gz", "out.npz"]
  # A gzipped FASTA gives the same rows; --overwrite replaces the file.
  proc = run_module("nlm_jax.embed", tmp_path, model_dir, "in.fa.gz", "out.npz", "--pooling=max",
                    "--overwrite")
  assert proc.returncode == 0, proc.stderr
  np.testing.assert_allclose(np.load(tmp_path / "out.npz")["embeddings"], api, atol=1e-5)


def test_export_then_embed_from_the_export(model_dir, tmp_path):
  write_fasta(tmp_path / "in.fa", random_seqs(5, 10, 100, seed=4))
  proc = run_module("nlm_jax.export", tmp_path, model_dir, "exported")
  assert proc.returncode == 0, proc.stderr
  assert sorted(os.listdir(tmp_path / "exported")) == ["config.json", "model.safetensors",
                                                       "nlm_jax.json"]
  # --overwrite replaces an earlier export, and leaves nothing else behind.
  proc = run_module("nlm_jax.export", tmp_path, model_dir, "exported", "--overwrite")
  assert proc.returncode == 0, proc.stderr
  assert sorted(os.listdir(tmp_path)) == ["exported", "in.fa"]
  for source, out in ((model_dir, "a.npz"), ("exported", "b.npz")):
    proc = run_module("nlm_jax.embed", tmp_path, source, "in.fa", out)
    assert proc.returncode == 0, proc.stderr
  np.testing.assert_array_equal(np.load(tmp_path / "a.npz")["embeddings"],
                                np.load(tmp_path / "b.npz")["embeddings"])


def test_embed_reads_fuzzed_files_as_the_reader_does(model_dir, tmp_path):
  """Empty lines after headers, CR/CRLF/mixed endings, a BOM, blanks, high bytes in names:
  no crash, and the rows of the sequences the reference reading finds."""
  from test_fasta import BOM, fuzz_fasta, reference_records

  rng = np.random.default_rng(5)
  data = b"".join(fuzz_fasta(rng).rstrip(b"\r\n") + b"\n" for _ in range(6))
  data = data[:3] + data[3:].replace(BOM, b"")  # a BOM only at the start
  data = data.replace(b"*", b"N").replace(b"\xc3", b"N")  # letters embed refuses
  (tmp_path / "odd.fa").write_bytes(data)
  (tmp_path / "odd.fa.gz").write_bytes(gzip.compress(data))
  want = reference_records(data)
  api = nlm_jax.load(model_dir, devices=jax.devices()[:1]).embed(
      [s.decode("latin-1") for _, s in want])
  for name in ("odd.fa", "odd.fa.gz"):
    proc = run_module("nlm_jax.embed", tmp_path, model_dir, name, name + ".npz")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    z = np.load(tmp_path / (name + ".npz"))
    assert list(z["ids"]) == [n for n, _ in want]
    np.testing.assert_allclose(z["embeddings"], api, atol=1e-5)


def test_embed_reads_a_lncrnapy_folder(model_dir, tmp_path):
  """The export renamed to what lncRNA-Py's save_pretrained writes; --context_length
  gives the windows of the model it came from (lncRNA-Py's folders do not store it)."""
  write_fasta(tmp_path / "in.fa", random_seqs(5, 10, 100, seed=6))
  proc = run_module("nlm_jax.export", tmp_path, model_dir, "lncRNA-BERT")
  assert proc.returncode == 0, proc.stderr
  os.remove(tmp_path / "lncRNA-BERT" / "nlm_jax.json")
  proc = run_module("nlm_jax.embed", tmp_path, "lncRNA-BERT", "in.fa", "out.npz",
                    "--context_length=16")
  assert proc.returncode == 0, proc.stderr
  assert "context 16" in proc.stdout
  api = nlm_jax.load(model_dir, devices=jax.devices()[:1]).embed(random_seqs(5, 10, 100, seed=6))
  np.testing.assert_allclose(np.load(tmp_path / "out.npz")["embeddings"], api, atol=1e-5)


# ---------------------------------------------------------------------- bad input


def test_embed_and_export_on_a_full_disk_are_one_line_errors(model_dir, tmp_path, small_disk):
  write_fasta(tmp_path / "in.fa", random_seqs(3, 10, 50, seed=5))
  fill(small_disk)
  proc = run_module("nlm_jax.embed", tmp_path, model_dir, "in.fa", "disk/out.npz")
  assert_one_line_error(proc, ["'disk/out.npz'", "free disk space"],
                        prefix="nlm_jax.embed: error:", progress=("embedding ", "[#"))
  assert os.listdir(small_disk) == ["filler"]
  proc = run_module("nlm_jax.export", tmp_path, model_dir, "disk/exported")
  assert_one_line_error(proc, ["'disk/exported'", "free disk space", "OUT_DIR"],
                        prefix="nlm_jax.export: error:")
  assert os.listdir(small_disk) == ["filler"]



def _protein(tmp, model):
  (tmp / "protein.fa").write_text(">p1\nACGT\n>p2\nMKTAYIAKQR\n")
  # M, K, T, A and Y are IUPAC codes too: I is the first letter that is none.
  return ["MODEL", "protein.fa", "out.npz"], ["'p2'", "'I'", "position 6", "protein"]


def _empty(tmp, model):
  (tmp / "empty.fa").write_bytes(b"")
  return ["MODEL", "empty.fa", "out.npz"], ["'empty.fa'", "empty"]


def _out_exists(tmp, model):
  (tmp / "out.npz").write_bytes(b"my earlier embeddings")
  return ["MODEL", "in.fa", "out.npz"], ["'out.npz'", "exists", "--overwrite"]


def _no_checkpoint(tmp, model):
  (tmp / "M2").mkdir()
  shutil.copy(os.path.join(model, "config.json"), tmp / "M2" / "config.json")
  return ["M2", "in.fa", "out.npz"], ["'M2'", "no checkpoint"]


def _config_not_json(tmp, model):
  (tmp / "M3").mkdir()
  (tmp / "M3" / "config.json").write_text("{not json")
  return ["M3", "in.fa", "out.npz"], ["config.json", "cannot be read"]


def _export_weights_damaged(tmp, model):
  (tmp / "E").mkdir()
  (tmp / "E" / "nlm_jax.json").write_text(open(os.path.join(model, "config.json")).read())
  (tmp / "E" / "model.safetensors").write_bytes(b"\x00" * 100)
  return ["E", "in.fa", "out.npz"], ["model.safetensors", "cannot be read", "export"]


def _neither(tmp, model):
  (tmp / "hub").mkdir()
  (tmp / "hub" / "config.json").write_text('{"architectures": ["BertForMaskedLM"]}')
  return ["hub", "in.fa", "out.npz"], ["'hub/config.json'", "neither", "expected a folder of",
                                       "lncRNA-Py's save_pretrained"]


def _lncrnapy_stub(tmp, vocab_size, pe_rows):
  """A lncRNA-Py token-model folder down to what is read before the tensors."""
  from safetensors.numpy import save_file

  (tmp / "L").mkdir()
  (tmp / "L" / "config.json").write_text(json.dumps({
      "base_arch": None, "base_arch_config": {"N": 1, "d_ff": 32, "d_model": 8, "dropout": 0.1,
                                              "h": 1, "type": "BERT", "vocab_size": vocab_size},
      "dropout": 0.0, "pred_batch_size": 8}))
  save_file({"base_arch.pos_encoder.pe": np.zeros((1, pe_rows, 8), np.float32)},
            str(tmp / "L" / "model.safetensors"))
  return "L"


def _lncrnapy_bpe_without_bpe_file(tmp, model):
  return [_lncrnapy_stub(tmp, 40, 100), "in.fa", "out.npz"], ["40 tokens", "--bpe_file"]


def _lncrnapy_context_beyond_table(tmp, model):
  return ([_lncrnapy_stub(tmp, 69, 100), "in.fa", "out.npz", "--context_length=101"],
          ["context length 101", "100 positions", "at most 100"])


def _out_parent_is_file(tmp, model):
  (tmp / "blocker").write_text("a regular file\n")
  return ["MODEL", "in.fa", "blocker/out.npz"], ["blocker", "is a file", "OUT"]


def _args(*args, fragments):
  return lambda tmp, model: (list(args), fragments)


EMBED_CASES = {
    "fasta_missing": _args("MODEL", "nope.fa", "out.npz",
                           fragments=["'nope.fa'", "does not exist"]),
    "fasta_empty": _empty,
    "protein_fasta": _protein,
    "out_exists": _out_exists,
    "out_not_npz": _args("MODEL", "in.fa", "out.csv", fragments=["'out.csv'", ".npz"]),
    "out_parent_is_file": _out_parent_is_file,
    "model_dir_missing": _args("nope", "in.fa", "out.npz", fragments=["'nope'", "does not exist"]),
    "model_dir_without_checkpoint": _no_checkpoint,
    "model_dir_config_not_json": _config_not_json,
    "export_weights_damaged": _export_weights_damaged,
    "model_dir_of_no_known_kind": _neither,
    "lncrnapy_bpe_without_bpe_file": _lncrnapy_bpe_without_bpe_file,
    "lncrnapy_context_beyond_table": _lncrnapy_context_beyond_table,
    "unknown_pooling": _args("MODEL", "in.fa", "out.npz", "--pooling=median",
                             fragments=["pooling", "median"]),
    "two_arguments": _args("MODEL", "in.fa", fragments=["expected MODEL_DIR, FASTA and OUT"]),
}

def _not_an_export(tmp, model):
  (tmp / "mine").mkdir()
  (tmp / "mine" / "notes.txt").write_text("mine\n")
  return ["MODEL", "mine", "--overwrite"], ["'mine'", "did not write", "choose another OUT_DIR"]


def _inside_other_run(tmp, model):
  (tmp / "run").mkdir()
  (tmp / "run" / "config.json").write_text('{"encoding_method": "conv"}')  # a run's
  return ["MODEL", "run/exp", "--overwrite"], ["'run/exp'", "lies inside", "run"]


def _out_dir_exists(tmp, model):
  (tmp / "prev").mkdir()
  return ["MODEL", "prev"], ["'prev'", "exists", "--overwrite"]


def _embedding_overwrites_other_file(tmp, model):
  (tmp / "out.npz").write_bytes(b"my earlier embeddings")
  return ["MODEL", "in.fa", "out.npz", "--overwrite"], ["'out.npz'", "no file that embed wrote"]


EMBED_CASES.update({
    "overwrite_of_a_file_embed_did_not_write": _embedding_overwrites_other_file,
    "out_inside_the_model_folder": _args("MODEL", "in.fa", "MODEL/e.npz", "--overwrite",
                                         fragments=["lies inside", "model or an export"]),
    # One step could never fit: refused before XLA tries (it aborted the process).
    "batch_size_far_too_large": _args("MODEL", "in.fa", "out.npz", "--batch_size=100000000",
                                      fragments=["100,000,000 rows", "GiB", "lower --batch_size"]),
    "out_folder_cannot_exist": _args("MODEL", "in.fa", "/proc/nope/e.npz",
                                     fragments=["/proc/nope", "OUT"]),
})

EXPORT_CASES = {
    # --overwrite never destroys what export did not write.
    "out_dir_is_model_dir": _args("MODEL", "MODEL", "--overwrite",
                                  fragments=["is, holds or lies inside MODEL_DIR"]),
    "out_dir_is_parent_of_model_dir": _args("MODEL", "MODEL/..", "--overwrite",
                                            fragments=["is, holds or lies inside MODEL_DIR"]),
    "out_dir_inside_model_dir": _args("MODEL", "MODEL/sub", "--overwrite",
                                      fragments=["is, holds or lies inside MODEL_DIR"]),
    "out_dir_is_a_file": _args("MODEL", "in.fa", "--overwrite", fragments=["'in.fa'", "no folder"]),
    "out_dir_not_an_export": _not_an_export,
    "out_dir_inside_another_run": _inside_other_run,
    "out_dir_cannot_exist": _args("MODEL", "/proc/nope/out", fragments=["/proc/nope", "OUT_DIR"]),
    "out_dir_exists": _out_dir_exists,
    "model_dir_missing": _args("nope", "out", fragments=["'nope'", "config.json"]),
    "one_argument": _args("MODEL", fragments=["expected MODEL_DIR and OUT_DIR"]),
}


# Also run afresh, as test_bad_input.FRESH: before the model is read, while reading it,
# while streaming the FASTA, and export's own check.
FRESH = (("embed", "fasta_missing"), ("embed", "model_dir_without_checkpoint"),
         ("embed", "protein_fasta"), ("export", "out_dir_exists"))


@pytest.mark.parametrize("command,case", [("embed", c) for c in EMBED_CASES] +
                         [("export", c) for c in EXPORT_CASES])
def test_bad_input_is_one_line_error(model_dir, tmp_path, command, case):
  write_fasta(tmp_path / "in.fa", random_seqs(3, 10, 50, seed=5))
  args, fragments = (EMBED_CASES if command == "embed" else EXPORT_CASES)[case](tmp_path, model_dir)
  args = [a.replace("MODEL", model_dir, 1) if a.startswith("MODEL") else a for a in args]
  before = snapshot(tmp_path)
  model_before = snapshot(model_dir)
  proc = run_module(f"nlm_jax.{command}", tmp_path, *args)
  assert_one_line_error(proc, fragments, prefix=f"nlm_jax.{command}: error:",
                        progress=("embedding ",))
  for fresh in (False, True) if (command, case) in FRESH else (False,):
    if fresh:
      assert_same_as_fresh(proc, f"nlm_jax.{command}", tmp_path, *args)
    if case == "protein_fasta":  # found while streaming: the partial file is gone, the folder touched
      assert snapshot(tmp_path)[0] == before[0]
    else:
      assert_unchanged(before, snapshot(tmp_path))
    assert_unchanged(model_before, snapshot(model_dir))


def test_a_model_trained_on_several_devices_is_read_on_one(tmp_path):
  # On a CPU a run splits its batch over one device per core; export and embed may then
  # run with another device count (orbax refused that topology before the fix).
  t = write_fasta(tmp_path / "t.fa", random_seqs(30, 20, 100, seed=1))
  v = write_fasta(tmp_path / "v.fa", random_seqs(10, 20, 100, seed=2))
  cfg = Config(t, v, epochs=1, model_dir=str(tmp_path / "M"), results_dir=str(tmp_path / "R"),
               **SMALL)
  train.run(cfg, jax.devices()[:2])
  one = {"XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  proc = run_module("nlm_jax.export", tmp_path, cfg.checkpoint_path, "exported", env=one)
  assert proc.returncode == 0, proc.stderr
  proc = run_module("nlm_jax.embed", tmp_path, cfg.checkpoint_path, "v.fa", "out.npz", env=one)
  assert proc.returncode == 0, proc.stderr
  api = nlm_jax.load(cfg.checkpoint_path, devices=jax.devices()[:1]).embed(random_seqs(10, 20, 100, seed=2))
  np.testing.assert_allclose(np.load(tmp_path / "out.npz")["embeddings"], api, atol=1e-5)
