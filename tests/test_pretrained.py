"""Using a pre-trained model: nlm_jax.load, embeddings, masked prediction, export.

Embeddings are checked against the encoder's output computed here from the tokenizers'
own single-sequence API; masked prediction against the logged Accuracy|valid of a run,
on the same masks; the safetensors export against a NumPy forward pass written here from
lncRNA-Py's layout (original-behaviour.md 7 and 11.3), so the weights are shown to load
without JAX.
"""

import dataclasses
import json
import logging
import os
import re

import jax
import numpy as np
import pytest

import nlm_jax
from conftest import numpy_logits, random_seqs, write_fasta
from nlm_jax import bpe, encodings, export, fasta as fasta_lib, folders, layout, model as model_lib
from nlm_jax import pretrained, sampler, train
from nlm_jax.config import Config, UserError

DEV = jax.devices()[:1]
SMALL = dict(d_model=32, n_kernels=32, N=2, h=4, kernel_size=3, context_length=16, k=3,
             batch_size=8, warmup_steps=4, n_samples_per_epoch=64, encoder_dropout=0.0)


def random_model(cfg, seed=0, batch_size=4, devices=DEV):
  params = model_lib.build(cfg).init(jax.random.key(seed), train.dummy_inputs(cfg))["params"]
  return pretrained.Model(cfg, params, devices=devices, batch_size=batch_size)


@pytest.fixture(scope="module")
def bpe_file(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("bpe")
  fa = write_fasta(tmp / "t.fa", random_seqs(200, 50, 200, seed=3))
  bpe.fit(fa, 40, str(tmp / "40.bpe"))
  return str(tmp / "40.bpe")


def config(encoding, bpe_path=None, **kw):
  extra = {"bpe_file": bpe_path, "bpe_vocab_size": 40} if encoding == "bpe" else {}
  return Config("t.fa", "v.fa", encoding_method=encoding, **{**SMALL, **extra, **kw})


ENCODINGS = ["conv", "nuc", "kmer", "bpe"]


def reference_rows(cfg, model, seqs):
  """Encoder outputs (B, L, D) and real positions (B, L) of single-window sequences, from
  the tokenizers' own API (tokens) or the nucleotide codes (conv)."""
  if cfg.is_token:
    tok = encodings.tokenizer(cfg)
    ids = np.stack([tok.tokenize(s) for s in seqs])
    inputs = ids
    real = (ids != encodings.CLS) & (ids != encodings.SEP) & (ids != encodings.PAD)
  else:
    ks = cfg.kernel_size
    inputs = np.full((len(seqs), cfg.n_nucleotides), fasta_lib.PAD, np.uint8)
    real = np.zeros((len(seqs), cfg.context_length), bool)
    for i, s in enumerate(seqs):
      inputs[i, :len(s)] = fasta_lib.encode(s)
      real[i, 1:1 + len(s) // ks] = True  # the whole windows: lncRNA-Py's mean pooling
  y, _ = model.module.apply({"params": model.params}, inputs, method="embed")
  return np.asarray(y), real


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_embeddings_are_the_encoder_output_pooled(encoding, bpe_file):
  cfg = config(encoding, bpe_file)
  model = random_model(cfg)
  n_max = cfg.context_length - 1 if encoding in ("nuc", "bpe") else cfg.n_nucleotides
  lengths = sorted({n for n in (1, 2, 7, 11, 30) if n < n_max} | {n_max})
  if encoding == "bpe":  # at most 15 pieces: one window
    lengths = [5, 9, 14]
  seqs = [random_seqs(1, n, n, seed=n)[0] for n in lengths]
  y, real = reference_rows(cfg, model, seqs)
  for i in range(len(seqs)):
    if not real[i].any():  # fewer nucleotides than a 3-mer or a kernel of 3: CLS stands in
      assert encoding in ("kmer", "conv") and len(seqs[i]) < 3
      real[i, 0] = True
  mean = np.stack([y[i][real[i]].mean(0) for i in range(len(seqs))])
  high = np.stack([y[i][real[i]].max(0) for i in range(len(seqs))])
  np.testing.assert_allclose(model.embed(seqs, "mean"), mean, atol=2e-5)
  np.testing.assert_allclose(model.embed(seqs, "max"), high, atol=2e-5)
  np.testing.assert_allclose(model.embed(seqs, "cls"), y[:, 0], atol=2e-5)
  assert model.embed(seqs).shape == (len(seqs), cfg.d_model)
  assert model.embed(seqs[0]).shape == (1, cfg.d_model)


@pytest.mark.parametrize("encoding", ["conv", "kmer"])
def test_mean_pooling_ignores_padding(encoding):
  cfg = config(encoding)
  model = random_model(cfg)
  short = random_seqs(1, 12, 12, seed=1)[0]
  long = random_seqs(1, 45, 45, seed=2)[0]
  # The padded positions have outputs of their own: a mean over them would differ.
  y, real = reference_rows(cfg, model, [short])
  assert np.abs(y[0][~real[0]].mean(0) - y[0][real[0]].mean(0)).max() > 1e-2
  alone = model.embed([short])
  # With a longer sequence in the same call, and in a batch padded to the full context.
  with_long = model.embed([long, short, long])[1]
  np.testing.assert_allclose(with_long, alone[0], atol=2e-5)
  np.testing.assert_allclose(model.embed([short], long_sequences="truncate"), alone, atol=2e-5)


@pytest.mark.parametrize("encoding", ["conv", "kmer"])
def test_long_sequences_pool_over_all_windows(encoding):
  cfg = config(encoding)
  model = random_model(cfg)
  seq = random_seqs(1, 100, 100, seed=4)[0]
  window = 45  # conv: 15 positions x 3 nt; 3-mer: 15 tokens x 3 nt
  pieces = [seq[:45], seq[45:90], seq[90:]]
  counts = np.array([15, 15, 3], np.float64)[:, None]  # 10 nt: 3 whole windows or 3-mers
  assert model.cfg.n_nucleotides == window
  mean_w, max_w, cls_w = (model.embed(pieces, p) for p in ("mean", "max", "cls"))
  np.testing.assert_allclose(model.embed(seq, "mean")[0], (mean_w * counts).sum(0) / counts.sum(),
                             atol=2e-5)
  np.testing.assert_allclose(model.embed(seq, "max")[0], max_w.max(0), atol=2e-5)
  np.testing.assert_allclose(model.embed(seq, "cls")[0], (cls_w * counts).sum(0) / counts.sum(),
                             atol=2e-5)
  np.testing.assert_allclose(model.embed(seq, long_sequences="truncate")[0], mean_w[0], atol=2e-5)


def test_embeddings_sharded_over_eight_devices_equal_one():
  cfg = config("conv")
  seqs = random_seqs(21, 1, 150, seed=5)
  one = random_model(cfg, batch_size=8).embed(seqs)
  eight = random_model(cfg, batch_size=8, devices=jax.devices()).embed(seqs)
  np.testing.assert_allclose(eight, one, atol=1e-5)


def test_stream_gives_the_same_rows_in_chunks():
  model = random_model(config("conv"))
  seqs = random_seqs(23, 1, 150, seed=6)
  chunks = list(model.embed_stream(iter(seqs), chunk=5))
  assert [len(c) for c in chunks] == [5, 5, 5, 5, 3]
  np.testing.assert_allclose(np.concatenate(chunks), model.embed(seqs), atol=2e-5)


def test_conv_predict_masked_reads_the_logits_at_each_question_mark():
  cfg = config("conv")
  model = random_model(cfg)
  seq = random_seqs(1, 100, 100, seed=7)[0]
  masked = [0, 3, 44, 45, 46, 99]
  query = "".join("?" if i in masked else c for i, c in enumerate(seq))
  probs = model.predict_masked(query, probabilities=True)
  assert probs.shape == (len(masked), 4)
  np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
  codes = fasta_lib.encode(query.replace("?", "N"))  # a masked nucleotide is N, as in training
  for j, p in enumerate(masked):
    window, at = divmod(p, cfg.n_nucleotides)
    row = codes[window * cfg.n_nucleotides:(window + 1) * cfg.n_nucleotides]
    logits = model.logits(model._pad([row], cfg.n_nucleotides))[0, at]
    np.testing.assert_allclose(probs[j], np.exp(logits) / np.exp(logits).sum(), atol=1e-5)
  filled = model.predict_masked(query)
  assert len(filled) == len(seq) and "?" not in filled
  assert [filled[p] for p in masked] == ["ACGT"[i] for i in probs.argmax(1)]
  assert all(filled[i] == seq[i] for i in range(len(seq)) if i not in masked)
  assert model.predict_masked([query, query]) == [filled, filled]


def test_kmer_predict_masked_sums_the_kmers_holding_each_nucleotide():
  cfg = config("kmer")
  model = random_model(cfg)
  seq = random_seqs(1, 20, 20, seed=8)[0]  # 6 whole 3-mers and 2 nucleotides left over
  query = seq[:4] + "?" + seq[5:7] + "??" + seq[9:19] + "?"  # 3-mers 1 (offset 1), 2 (1, 2)
  probs = model.predict_masked(query, probabilities=True)
  tok = encodings.tokenizer(cfg)
  ids = tok.tokenize(seq)
  ids[2] = ids[3] = encodings.MASK  # tokens 1 and 2 (after CLS)
  logits = model.logits(ids[None])[0]
  softmax = np.exp(logits - logits.max(-1, keepdims=True))
  softmax /= softmax.sum(-1, keepdims=True)
  nucs = tok.token_nucleotides()
  for j, (position, offset) in enumerate([(2, 1), (3, 1), (3, 2)]):
    expected = np.array([softmax[position][nucs[:, offset] == c].sum() for c in range(4)])
    np.testing.assert_allclose(probs[j], expected / expected.sum(), atol=1e-5)
  assert np.isnan(probs[3]).all()  # the last nucleotide is in no 3-mer
  assert model.predict_masked(query)[-1] == "N"


def test_bpe_predict_masked_gives_a_distribution_per_question_mark(bpe_file):
  model = random_model(config("bpe", bpe_file))
  seq = random_seqs(1, 60, 60, seed=9)[0]
  query = seq[:10] + "??" + seq[12:40] + "?" + seq[41:]
  probs = model.predict_masked(query, probabilities=True)
  assert probs.shape == (3, 4)
  np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
  filled = model.predict_masked(query)
  assert filled[:10] == seq[:10] and filled[12:40] == seq[12:40] and filled[41:] == seq[41:]
  assert [filled[i] for i in (10, 11, 40)] == ["ACGT"[j] for j in probs.argmax(1)]


def test_bf16_embeddings_are_close_to_fp32():
  cfg = config("conv")
  params = model_lib.build(cfg).init(jax.random.key(0), train.dummy_inputs(cfg))["params"]
  seqs = random_seqs(6, 10, 120, seed=10)
  fp32 = pretrained.Model(cfg, params, precision="fp32", devices=DEV).embed(seqs)
  bf16_model = pretrained.Model(cfg, params, precision="bf16", devices=DEV)
  assert bf16_model.cfg.precision == "bf16"
  bf16 = bf16_model.embed(seqs)
  assert bf16.dtype == np.float32 and not np.array_equal(bf16, fp32)
  np.testing.assert_allclose(bf16, fp32, atol=0.1)
  assert np.corrcoef(bf16.ravel(), fp32.ravel())[0, 1] > 0.99


def test_bad_sequences_and_options_are_user_errors():
  model = random_model(config("conv"))
  with pytest.raises(UserError, match=r"sequence 2 holds 'E' at position 3"):
    model.embed(["ACGT", "ACEGT"])
  with pytest.raises(UserError, match="pooling must be one of"):
    model.embed(["ACGT"], pooling="median")
  with pytest.raises(UserError, match="long_sequences"):
    model.embed(["ACGT"], long_sequences="crop")
  # U, lower case, IUPAC codes and gaps read as in pre-training.
  np.testing.assert_allclose(model.embed(["acgu-RN"]), model.embed(["ACGTNNN"]), atol=1e-6)
  # Arguments of another type are UserErrors too, never a TypeError from below (issue 24).
  for call, fragment in ((lambda: model.embed(123), "sequences must be a string or an iterable"),
                         (lambda: model.embed(["ACGT", b"ACGT"]), "sequence 2 is a bytes"),
                         (lambda: model.predict_masked([None]), "sequence 1 is a NoneType"),
                         (lambda: list(model.embed_stream(["ACGT"], chunk=0)), "chunk must be"),
                         (lambda: model.logits(np.zeros(5, np.int32)), "2-D array of whole numbers"),
                         (lambda: model.logits(np.zeros((2, 5))), "2-D array of whole numbers")):
    with pytest.raises(UserError, match=fragment):
      call()


@pytest.mark.parametrize("kwargs, fragment", [
    ({"batch_size": 0}, "batch_size must be a whole number of at least 1, got 0"),
    ({"batch_size": -3}, "got -3"),
    ({"batch_size": 2.5}, "got 2.5"),
    ({"batch_size": True}, "got True"),
    ({"context_length": 1.5}, "context_length must be a whole number of at least 2"),
    ({"context_length": 1}, "context_length must be"),
    ({"precision": "fp16"}, "precision must be auto, fp32 or bf16"),
    ({"devices": []}, "devices must be a non-empty list of JAX devices"),
    ({"devices": ["cpu"]}, "devices must be"),
    ({"bpe_file": 3}, "bpe_file must be a path"),
])
def test_bad_arguments_of_load_are_user_errors(kwargs, fragment):
  """Refused before the folder is read: the folder need not exist."""
  with pytest.raises(UserError, match=re.escape(fragment)):
    nlm_jax.load("nowhere", **kwargs)
  with pytest.raises(UserError, match="path must be a model folder"):
    nlm_jax.load(None)


# ------------------------------------------------------ trained models and the export


@pytest.fixture(scope="module", params=["conv", "kmer"])
def trained(request, tmp_path_factory):
  """A tiny model pre-trained for two epochs: (Config, history rows)."""
  tmp = tmp_path_factory.mktemp(request.param)
  t = write_fasta(tmp / "t.fa", random_seqs(60, 20, 150, seed=11))
  v = write_fasta(tmp / "v.fa", random_seqs(80, 20, 150, seed=12))
  cfg = Config(t, v, encoding_method=request.param, epochs=2, model_dir=str(tmp / "M"),
               results_dir=str(tmp / "R"), precision="fp32", **SMALL)
  return cfg, train.run(cfg, DEV)


def valid_set(cfg):
  """The validation inputs and targets of train.run: the same windows and masks."""
  fa = fasta_lib.Fasta(cfg.valid_path)
  return sampler.eval_set(fa, sampler.eval_indices(len(fa), cfg.n_eval, cfg.valid_seed),
                          sampler.encoding_for(cfg), seed=cfg.seed + 1)


def test_masked_prediction_accuracy_equals_the_logged_accuracy(trained):
  cfg, rows = trained
  model = nlm_jax.load(cfg.checkpoint_path, devices=DEV)
  data = valid_set(cfg)
  logits = model.logits(data["inputs"])
  targets = data["targets"][:, :logits.shape[1]].astype(np.int64)
  selected = targets >= 0
  accuracy = np.mean(logits.argmax(-1)[selected] == targets[selected])
  best = max(r["Accuracy|valid"] for r in rows)  # load() takes the best checkpoint
  assert accuracy == pytest.approx(best, abs=1e-12), (accuracy, [r["Accuracy|valid"] for r in rows])
  assert selected.sum() > 100 and accuracy > 0


def test_load_of_a_healthy_model_folder_warns_nothing(trained, caplog):
  cfg, _ = trained
  caplog.set_level(logging.WARNING)
  nlm_jax.load(cfg.checkpoint_path, devices=DEV)
  assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def numpy_forward(folder, x):
  """MLM logits from model.safetensors and config.json alone, in NumPy, with lncRNA-Py's
  layout: the reading side of the export (original 7.1-7.3, 11.3)."""
  from safetensors.numpy import load_file

  t = load_file(os.path.join(folder, "model.safetensors"))
  with open(os.path.join(folder, "config.json")) as f:
    c = json.load(f)
  return numpy_logits(t, c, x)


def test_export_round_trip_and_numpy_forward(trained, tmp_path):
  cfg, _ = trained
  out = str(tmp_path / "export")
  export.export(cfg.checkpoint_path, out)
  assert sorted(os.listdir(out)) == ["config.json", "model.safetensors", "nlm_jax.json"]
  from_ckpt = nlm_jax.load(cfg.checkpoint_path, devices=DEV)
  from_export = nlm_jax.load(out, devices=DEV)
  data = valid_set(cfg)
  logits = from_ckpt.logits(data["inputs"])
  np.testing.assert_array_equal(from_export.logits(data["inputs"]), logits)
  seqs = random_seqs(9, 1, 200, seed=13)
  np.testing.assert_array_equal(from_export.embed(seqs), from_ckpt.embed(seqs))
  np.testing.assert_allclose(numpy_forward(out, data["inputs"][:16]), logits[:16], atol=1e-4)
  with pytest.raises(UserError, match="exists"):
    export.export(cfg.checkpoint_path, out)
  (tmp_path / "export" / "stale").write_text("not written by export")
  with pytest.raises(UserError, match="did not write"):  # --overwrite replaces only an export
    export.export(cfg.checkpoint_path, out, overwrite=True)
  os.remove(tmp_path / "export" / "stale")
  (tmp_path / "export" / "model.safetensors").write_bytes(b"from an earlier export")
  export.export(cfg.checkpoint_path, out, overwrite=True)  # replaced whole
  assert folders.read(out)[1] is not None
  assert sorted(os.listdir(out)) == ["config.json", "model.safetensors", "nlm_jax.json"]
  assert not [n for n in os.listdir(tmp_path) if n.startswith(".export-")]


def test_export_names_and_shapes_follow_lncrnapy():
  """Every tensor lncRNA-Py names for a conv model with both optional linears and the
  output ReLU (original 11.3), no others, in PyTorch layouts."""
  cfg = config("conv", d_model=32, n_kernels=16, N=1, input_linear=True, output_relu=True)
  model = random_model(cfg)
  tensors = layout.to_tensors(cfg, jax.device_get(model.params))
  base, layer = "base_arch.", "base_arch.encoder.layers.0."
  expected = {
      base + "conv_seq_embedder.cls_token": (1, 1, 32),
      base + "conv_seq_embedder.conv_seq_encoder.cse_layers.0.weight": (16, 4, 3),
      base + "conv_seq_embedder.conv_seq_encoder.cse_layers.0.bias": (16,),
      base + "conv_seq_embedder.linear.weight": (32, 16),
      base + "conv_seq_embedder.linear.bias": (32,),
      base + "positional_encoder.pe": (1, 5000, 32),
      **{layer + f"0.linears.{j}.{p}": (32, 32) if p == "weight" else (32,)
         for j in range(4) for p in ("weight", "bias")},
      layer + "1.norm.weight": (32,), layer + "1.norm.bias": (32,),
      layer + "2.lin_1.weight": (128, 32), layer + "2.lin_1.bias": (128,),
      layer + "2.lin_2.weight": (32, 128), layer + "2.lin_2.bias": (32,),
      layer + "3.norm.weight": (32,), layer + "3.norm.bias": (32,),
      base + "encoder.norm.weight": (32,), base + "encoder.norm.bias": (32,),
      "linear.weight": (16, 32), "linear.bias": (16,),
      "transposed_conv_layers.1.weight": (16, 4, 3), "transposed_conv_layers.1.bias": (4,),
  }
  assert {k: v.shape for k, v in tensors.items()} == expected
  assert all(v.dtype == np.float32 for v in tensors.values())
  # The conv weight in PyTorch's layout: W[k, c, j] multiplies channel c at offset j.
  k = np.asarray(model.params["stem"]["conv"]["kernel"])  # (ks * 4, n_kernels)
  w = tensors[base + "conv_seq_embedder.conv_seq_encoder.cse_layers.0.weight"]
  assert w[5, 2, 1] == k[1 * 4 + 2, 5]
  back = layout.from_tensors(cfg, tensors, "t", "r")
  for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(model.params))[0]:
    node = back
    for p in path:
      node = node[p.key]
    np.testing.assert_array_equal(node, leaf)


def test_export_of_a_bpe_model_carries_its_tokenizer(bpe_file, tmp_path):
  cfg = dataclasses.replace(config("bpe", bpe_file), data_dir="")
  model = random_model(cfg)
  out = tmp_path / "export"
  out.mkdir()
  from safetensors.numpy import save_file
  save_file(layout.to_tensors(cfg, jax.device_get(model.params)), str(out / "model.safetensors"))
  (out / "tokenizer.bpe").write_bytes(open(bpe_file, "rb").read())
  moved = dataclasses.replace(cfg, bpe_file=str(tmp_path / "gone.bpe"))
  (out / "nlm_jax.json").write_text(moved.to_json())  # the original BPE path is gone
  loaded = nlm_jax.load(str(out), devices=DEV)
  seqs = random_seqs(3, 5, 14, seed=14)
  np.testing.assert_allclose(loaded.embed(seqs), model.embed(seqs), atol=1e-6)
