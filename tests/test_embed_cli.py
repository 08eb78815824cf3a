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
from conftest import random_seqs, signal_while_writing, write_fasta
from nlm_jax import projection, train
from nlm_jax.config import Config, UserError
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


def test_embed_two_files_with_a_pca_plot(model_dir, tmp_path):
  """Several FASTA files: their records one after another; --plot pca draws OUT.png, a
  colour per file, from the embeddings' first two principal components."""
  a, b = random_seqs(12, 20, 100, seed=5), random_seqs(9, 20, 100, seed=6)
  write_fasta(tmp_path / "a.fa", a, "a")
  write_fasta(tmp_path / "b.fa", b, "b")
  proc = run_module("nlm_jax.embed", tmp_path, model_dir, "a.fa", "b.fa", "out.npz", "--plot=pca")
  assert proc.returncode == 0, proc.stderr
  assert "wrote out.npz and out.png: 21 embeddings" in proc.stdout
  z = np.load(tmp_path / "out.npz")
  assert list(z["ids"]) == [f"a_{i}" for i in range(12)] + [f"b_{i}" for i in range(9)]
  api = nlm_jax.load(model_dir, devices=jax.devices()[:1]).embed(a + b)
  np.testing.assert_allclose(z["embeddings"], api, atol=1e-5)
  png = (tmp_path / "out.png").read_bytes()
  assert png.startswith(b"\x89PNG") and len(png) > 5000 and projection.is_plot_file(tmp_path / "out.png")
  import matplotlib.image

  pixels = matplotlib.image.imread(tmp_path / "out.png")[..., :3].reshape(-1, 3)
  colours = {tuple(np.round(c, 1)) for c in pixels if np.ptp(c) > 0.3}  # not white, grey, black
  assert len(colours) >= 2  # two files, two colours
  # The plot is refused as OUT is, unless --overwrite.
  again = run_module("nlm_jax.embed", tmp_path, model_dir, "a.fa", "b.fa", "out2.npz", "--plot=pca")
  assert again.returncode == 0
  (tmp_path / "out3.png").write_text("not a plot")
  refused = run_module("nlm_jax.embed", tmp_path, model_dir, "a.fa", "out3.npz", "--plot=pca",
                       "--overwrite")
  assert refused.returncode == 2 and "out3.png" in refused.stderr, refused.stderr
  assert not (tmp_path / "out3.npz").exists()


def test_pca_projection_is_the_first_two_principal_components():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(50, 6)) * [5, 3, 1, 0.5, 0.2, 0.1] @ np.linalg.qr(rng.normal(size=(6, 6)))[0]
  xy = projection.project(x, "pca")
  centred = x - x.mean(0)
  values, vectors = np.linalg.eigh(np.cov(centred.T))
  want = centred @ vectors[:, ::-1][:, :2]  # the two largest eigenvalues' directions
  for i in range(2):
    assert abs(np.corrcoef(xy[:, i], want[:, i])[0, 1]) == pytest.approx(1, abs=1e-9)
    assert xy[np.abs(xy[:, i]).argmax(), i] > 0  # signs fixed
  np.testing.assert_allclose(np.var(xy, axis=0, ddof=1), values[::-1][:2], rtol=1e-9)


@pytest.mark.parametrize("method, package", [("tsne", "scikit-learn"), ("umap", "umap-learn")])
def test_plot_without_its_package_names_the_extra(method, package, monkeypatch):
  import sys

  monkeypatch.setitem(sys.modules, projection.NEEDS[method][0], None)  # import fails
  with pytest.raises(UserError) as e:
    projection.check_available(method)
  assert str(e.value) == (f"--plot {method} needs {package}, which is not installed: pip install -e "
                          f"'.[plots]' (or pip install {package}) from the repository root, or "
                          "use --plot pca.")


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
  (tmp / "protein.fa").write_text(">p1\nMKTAYIAKQRQISFVKSHFSRQLEERLGLIEV\n>p2\nMKTAYIAKQR\n")
  return ["MODEL", "protein.fa", "out.npz"], ["'protein.fa'", "not nucleotide sequences",
                                              "38%", "'L'", "protein"]


def _protein_record(tmp, model):
  # One protein among nucleotide records: too few letters for the file's alphabet check,
  # refused by the record's. M, K, T, A and Y are IUPAC codes too: I is the first that is none.
  (tmp / "mixed.fa").write_text("".join(f">r{i}\n{s}\n" for i, s in enumerate(random_seqs(20, 50, 60)))
                                + ">p2\nMKTAYIAKQR\n")
  return ["MODEL", "mixed.fa", "out.npz"], ["'p2'", "'I'", "position 6", "protein"]


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


def _edited(edit, fragments):
  """MODEL copied as D, its config.json edited."""
  def case(tmp, model):
    shutil.copytree(model, tmp / "D")
    stored = json.loads((tmp / "D" / "config.json").read_text())
    edit(stored)
    (tmp / "D" / "config.json").write_text(json.dumps(stored))
    return ["D", "in.fa", "out.npz"], fragments
  return case


def _damaged_file(pick, data, fragments):
  """MODEL copied, one file of its best checkpoint (`pick` of its files) replaced by `data`
  (bytes, or a function of the old bytes)."""
  def case(tmp, model):
    shutil.copytree(model, tmp / "D")
    step = max(n for n in os.listdir(tmp / "D") if n.isdigit())
    path = pick(tmp / "D" / step)
    path.write_bytes(data(path.read_bytes()) if callable(data) else data)
    return ["D", "in.fa", "out.npz"], [f"'D/{step}'"] + fragments
  return case


def _largest_array_file(step_dir):
  return max((p for p in (step_dir / "params").rglob("*") if p.is_file() and "/d/" in str(p)),
             key=lambda p: p.stat().st_size)


def _exported(edit_tensors=None, edit_config=None, lncrnapy=False, fragments=()):
  """An export of MODEL (or, without nlm_jax.json, the folder lncRNA-Py's save_pretrained
  writes), its tensors or configuration edited."""
  def case(tmp, model):
    from safetensors.numpy import load_file, save_file

    from nlm_jax import export

    export.export(model, str(tmp / "E"))
    if lncrnapy:
      os.remove(tmp / "E" / "nlm_jax.json")
    config = tmp / "E" / ("config.json" if lncrnapy else "nlm_jax.json")
    if edit_tensors:
      tensors = dict(load_file(str(tmp / "E" / "model.safetensors")))
      edit_tensors(tensors)
      save_file(tensors, str(tmp / "E" / "model.safetensors"))
    if edit_config:
      stored = json.loads(config.read_text())
      edit_config(stored)
      config.write_text(json.dumps(stored))
    return ["E", "in.fa", "out.npz"], list(fragments)
  return case


def _nan_weight(tensors):
  tensors["base_arch.encoder.norm.bias"] = np.full_like(tensors["base_arch.encoder.norm.bias"],
                                                         np.inf)


def _bpe_without_tokenizer(stored):
  stored.update(encoding_method="bpe", bpe_vocab_size=30, bpe_file="")


def _args(*args, fragments):
  return lambda tmp, model: (list(args), fragments)


EMBED_CASES = {
    "fasta_missing": _args("MODEL", "nope.fa", "out.npz",
                           fragments=["'nope.fa'", "does not exist"]),
    "fasta_empty": _empty,
    "protein_fasta": _protein,
    "protein_record": _protein_record,
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
    "two_arguments": _args("MODEL", "in.fa", fragments=["expected MODEL_DIR, FASTA (one or more) and OUT"]),
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

# Model folders that are not as they were written (issue 24): one line naming the file, the
# entry or tensor and what it should hold, from embed, classify, export and nlm_jax.load alike.
FOLDER_CASES = {
    "config_d_model_changed": _edited(lambda c: c.update(d_model=64), [
        "'D/", "encoder/blocks/LayerNorm_0/bias of shape (1, 32)", "builds (1, 64)", "edited"]),
    "config_entry_removed": _edited(lambda c: c.pop("N"), [
        "'D/config.json'", "lacks the entry 'N'", "a whole number at least 1"]),
    "config_null_for_a_number": _edited(lambda c: c.update(kernel_size=None), [
        "'D/config.json'", "'kernel_size': null", "a whole number"]),
    "config_string_for_a_number": _edited(lambda c: c.update(d_model="32"), [
        "'D/config.json'", "'d_model': \"32\"", "a whole number"]),
    "config_unknown_encoding": _edited(lambda c: c.update(encoding_method="foo"), [
        "'D/config.json'", "'encoding_method': \"foo\"", "one of conv, bpe"]),
    "checkpoint_array_truncated": _damaged_file(_largest_array_file, lambda b: b[:len(b) // 3],
                                                ["cannot be read", "restore the folder"]),
    "checkpoint_metadata_garbage": _damaged_file(lambda d: d / "params" / "_METADATA", b"garbage",
                                                 ["is damaged", "_METADATA"]),
    "export_non_finite_weights": _exported(_nan_weight, fragments=[
        "'E'", "32 NaN or infinite weights", "encoder/final_norm/bias"]),
    "export_bpe_without_tokenizer": _exported(edit_config=_bpe_without_tokenizer, fragments=[
        "'E'", "BPE model without its tokenizer", "tokenizer.bpe"]),
    "export_tensor_missing": _exported(lambda t: t.pop("base_arch.encoder.norm.weight"), fragments=[
        "'E/model.safetensors'", "no tensor 'base_arch.encoder.norm.weight'", "export the model"]),
    "lncrnapy_string_for_a_number": _exported(
        edit_config=lambda c: c["base_arch_config"].update(N="1"), lncrnapy=True,
        fragments=["'E/config.json'", "'N' in base_arch_config", '"1"', "download the folder"]),
    "lncrnapy_tensor_of_another_shape": _exported(
        lambda t: t.update({"base_arch.encoder.layers.0.2.lin_1.weight": np.zeros((8, 32), np.float32)}),
        lncrnapy=True, fragments=["lin_1.weight' of shape (8, 32)", "needs (128, 32)"]),
}
EMBED_CASES.update(FOLDER_CASES)
EMBED_CASES.update({
    "batch_size_zero": _args("MODEL", "in.fa", "out.npz", "--batch_size=0",
                             fragments=["--batch_size", "0"]),
    "flagfile_latin1": _args("MODEL", "in.fa", "out.npz", "--flagfile=in.fa.flags",
                             fragments=["flagfile", "UTF-8"]),
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
    # The folder reader, as for embed; export reads only a run's folder.
    "model_config_edited": lambda tmp, model: (
        [_edited(lambda c: c.update(N=3), [])(tmp, model)[0][0], "out"],
        ["'D/", "encoder/blocks", "edited"]),
    "model_array_truncated": lambda tmp, model: (
        [FOLDER_CASES["checkpoint_array_truncated"](tmp, model)[0][0], "out"], ["cannot be read"]),
    "model_dir_is_an_export": lambda tmp, model: (
        [_exported()(tmp, model)[0][0], "out"], ["'E'", "export or lncRNA-Py folder already"]),
}


# Also run afresh, as test_bad_input.FRESH: before the model is read, while reading it,
# while streaming the FASTA, and export's own check.
FRESH = (("embed", "fasta_missing"), ("embed", "model_dir_without_checkpoint"),
         ("embed", "protein_record"), ("export", "out_dir_exists"))


@pytest.mark.parametrize("command,case", [("embed", c) for c in EMBED_CASES] +
                         [("export", c) for c in EXPORT_CASES])
def test_bad_input_is_one_line_error(model_dir, tmp_path, command, case, monkeypatch):
  write_fasta(tmp_path / "in.fa", random_seqs(3, 10, 50, seed=5))
  (tmp_path / "in.fa.flags").write_bytes(b"--pooling=m\xe9an\n")
  args, fragments = (EMBED_CASES if command == "embed" else EXPORT_CASES)[case](tmp_path, model_dir)
  args = [a.replace("MODEL", model_dir, 1) if a.startswith("MODEL") else a for a in args]
  before = snapshot(tmp_path)
  model_before = snapshot(model_dir)
  proc = run_module(f"nlm_jax.{command}", tmp_path, *args)
  assert_one_line_error(proc, fragments, prefix=f"nlm_jax.{command}: error:",
                        progress=("embedding ",))
  # The Python API says the same, as a UserError (of a truncated array orbax names any one).
  if case in FOLDER_CASES and case != "checkpoint_array_truncated":
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as e:
      nlm_jax.load(args[0], devices=jax.devices()[:1])
    assert proc.stderr.strip() == f"nlm_jax.embed: error: {e.value}"
  for fresh in (False, True) if (command, case) in FRESH else (False,):
    if fresh:
      assert_same_as_fresh(proc, f"nlm_jax.{command}", tmp_path, *args)
    if case == "protein_record":  # found while streaming: the partial file is gone, the folder touched
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


# ------------------------------------------------------- one writer, nothing half-written


def test_out_being_written_by_another_command_is_refused(model_dir, tmp_path):
  from nlm_jax import outputs

  write_fasta(tmp_path / "in.fa", random_seqs(3, 10, 50, seed=5))
  lock = outputs.Lock(str(tmp_path / "out.npz"), "busy", "unwritable")  # another writer
  try:
    proc = run_module("nlm_jax.embed", tmp_path, model_dir, "in.fa", "out.npz")
    assert_one_line_error(proc, ["OUT 'out.npz' is being written by process", str(os.getpid())],
                          prefix="nlm_jax.embed: error:", progress=("embedding ", "["))
  finally:
    lock.release()
  assert sorted(os.listdir(tmp_path)) == ["in.fa"]


def test_out_under_a_file_size_limit_is_one_line_and_leaves_nothing(model_dir, tmp_path):
  write_fasta(tmp_path / "in.fa", random_seqs(200, 10, 50, seed=5))
  proc = run_module("nlm_jax.embed", tmp_path, model_dir, "in.fa", "out.npz",
                    limits={"RLIMIT_FSIZE": (8192, 8192)})
  assert_one_line_error(proc, ["writing OUT 'out.npz' failed (File too large)", "ulimit -f"],
                        prefix="nlm_jax.embed: error:", progress=("embedding ", "["))
  assert sorted(os.listdir(tmp_path)) == ["in.fa"]


def test_sigterm_while_writing_removes_the_temporary_file(model_dir, tmp_path):
  import signal

  write_fasta(tmp_path / "in.fa", random_seqs(4000, 50, 100, seed=5))
  code, err = signal_while_writing("nlm_jax.embed", tmp_path, signal.SIGTERM, model_dir, "in.fa",
                                   "out.npz", "--batch_size=1")
  assert code == 143, err
  assert err.strip().splitlines() == [
      "nlm_jax.embed: stopped by SIGTERM: its output was not written (nothing half-written is "
      "left); run the same command again."], err
  assert sorted(os.listdir(tmp_path)) == ["in.fa"]
