import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import random_seqs, shared_path, write_fasta
from nlm_jax import bpe, encodings, fasta as fasta_lib, model as model_lib, sampler, train
from nlm_jax.config import Config

# Whole runs use one of the eight fake devices. XLA's in-process CPU collectives have hit
# their 40 s rendezvous timeout (an abort) in long multi-device runs on a loaded 2-core
# machine; the sharded step itself is tested on 8 devices in test_train.py.
RUN_DEVICES = jax.devices()[:1]
FIXTURE = "GTTAACTTGCCGTCAGCCTTTTCNTTGACCTCTTCTTTCTGTTCATGTGTATTTGCTGTC"


def test_kmer_ids():
  """15.5: 3-mer ids = 5 + sum(idx * 4^(k-1-j))."""
  tok = encodings.KmerTokenizer(3, 3)
  for kmer, want in [("AAA", 5), ("AAC", 6), ("AAG", 7), ("ACG", 11), ("CGT", 32), ("GTA", 49),
                     ("TAC", 54), ("TTT", 68)]:
    assert tok.tokenize(kmer)[1] == want


@pytest.mark.parametrize("seq, want", [
    ("AAATTTA", [1, 5, 68, 2, 3, 3, 3, 3]),
    ("AAATTTAAATTTAAATTT", [1, 5, 68, 5, 68, 5, 68, 2]),
    ("AAATTTAAATTTAAATTTAAATTTAAA", [1, 5, 68, 5, 68, 5, 68, 5]),
    ("AANTTTGGG", [1, 4, 68, 47, 2, 3, 3, 3]),
    ("AAUTTT", [1, 4, 68, 2, 3, 3, 3, 3]),
    ("ACGTACGTACGTACGTACGTA", [1, 11, 54, 49, 32, 11, 54, 49]),
    ("AA", [1, 2, 3, 3, 3, 3, 3, 3]),  # shorter than k: no token (the original crashed)
])
def test_kmer_tokenizer_examples(seq, want):
  np.testing.assert_array_equal(encodings.KmerTokenizer(3, 8).tokenize(seq), want)


def test_nuc_tokenizer_example():
  np.testing.assert_array_equal(encodings.KmerTokenizer(1, 10).tokenize("ACGTN"),
                                [1, 5, 6, 7, 8, 4, 2, 3, 3, 3])


def test_fixture_record():
  """15.5: the 60-nt `>test` record as 3-mers, 6-mers and nucleotides (cl 768)."""
  ids3 = encodings.KmerTokenizer(3, 768).tokenize(FIXTURE)
  np.testing.assert_array_equal(ids3[:24], [1, 52, 6, 67, 27, 57, 42, 68, 4, 67, 10, 60, 60, 66,
                                            64, 57, 64, 49, 68, 44, 50, 2, 3, 3])
  ids6 = encodings.KmerTokenizer(6, 768).tokenize(FIXTURE)
  np.testing.assert_array_equal(ids6[:13], [1, 3014, 3995, 3370, 4, 3978, 3580, 3968, 3392, 2884,
                                            2546, 2, 3])
  nuc = encodings.KmerTokenizer(1, 768).tokenize(FIXTURE)
  assert nuc[24] == encodings.UNK and nuc[61] == encodings.SEP and (nuc[62:] == 3).all()


def test_pipeline_maps_u_to_t():
  """Our normalisation (U -> T) runs before tokenizing: AAU is AAT (8), not UNK."""
  tok = encodings.KmerTokenizer(3, 8)
  codes = fasta_lib.encode("AAUTTT")[None]
  np.testing.assert_array_equal(tok(codes, np.array([True])), [[1, 8, 68, 2, 3, 3, 3, 3]])


def test_kmer_vocab_and_token_nucleotides():
  tok = encodings.KmerTokenizer(3, 8)
  assert tok.vocab_size == 69
  table = tok.token_nucleotides()
  assert table.shape == (69, 3)
  assert (table[:5] == -1).all()
  np.testing.assert_array_equal(table[54], [3, 0, 1])  # TAC


def test_bpe_file_of_lncrnapy_loads_and_matches_reference():
  """15.5: ACGTACGTAAAATTTTNNNU -> ACG | TACG | TAAAA | TTTT | NNNU(unk)."""
  tok = encodings.BpeTokenizer(shared_path("data", "lncrnapy_256.bpe"), 12)
  assert tok.vocab_size == 256 and tok.max_piece == 6
  assert tok.sp.encode("ACGTACGTAAAATTTTNNNU") == [74, 208, 122, 38, 4]
  np.testing.assert_array_equal(tok.tokenize("ACGTACGTAAAATTTTNNNU"),
                                [1, 74, 208, 122, 38, 4, 2, 3, 3, 3, 3, 3])
  assert not tok.is_nucleotides[5]  # the stray "None" piece is never a target or replacement


def test_bpe_first_records_of_lncrnapy_fixture():
  """15.5: BPE 256, cl 12, first three records of tests/data/ncrna.fasta."""
  tok = encodings.BpeTokenizer(shared_path("data", "lncrnapy_256.bpe"), 12)
  fa = fasta_lib.Fasta(shared_path("data", "small_ncrna.fasta"))
  want = [[1, 254, 10, 24, 143, 254, 11, 34, 127, 4, 28, 19],
          [1, 254, 17, 60, 33, 48, 55, 254, 28, 11, 46, 254],
          [1, 245, 9, 21, 75, 21, 134, 28, 48, 21, 121, 171]]
  codes, ended = sampler.read_windows(fa, np.arange(3), tok.window, None, 1, False)
  np.testing.assert_array_equal(tok(codes, ended), want)


def test_bpe_ids_are_the_whole_sequence_pieces_kept_within_a_budget(tmp_path, monkeypatch):
  """BpeTokenizer.ids keeps the tokenizations it made, keyed by content, while they fit
  in CACHED_PIECES; beyond it a sequence is tokenized at every call."""
  fit_fa = write_fasta(tmp_path / "t.fa", random_seqs(40, 200, 400, seed=7))
  bpe.fit(fit_fa, 40, str(tmp_path / "40.bpe"))
  codes = [fasta_lib.encode(s) for s in random_seqs(3, 300, 300, seed=9)]
  tok = encodings.BpeTokenizer(str(tmp_path / "40.bpe"), 16)
  first = tok.ids(codes)
  for c, ids in zip(codes, first):
    np.testing.assert_array_equal(ids, tok.spans(c)[0])
  assert all(a is b for a, b in zip(tok.ids(codes), first))  # kept
  other = codes[0][:-1]
  np.testing.assert_array_equal(tok.ids([other])[0], tok.spans(other)[0])
  monkeypatch.setattr(encodings, "CACHED_PIECES", 0)
  tok = encodings.BpeTokenizer(str(tmp_path / "40.bpe"), 16)
  first = tok.ids(codes)
  assert not any(a is b for a, b in zip(tok.ids(codes), first))  # nothing kept


def test_token_masking_statistics():
  cfg = Config("t", "v", encoding_method="kmer", k=3, context_length=200)
  enc = sampler.TokenEncoding(cfg, encodings.KmerTokenizer(3, 200))
  rng = np.random.default_rng(0)
  codes = rng.integers(0, 5, (400, enc.window)).astype(np.uint8)  # N among the letters
  codes[200:, 300:] = fasta_lib.PAD
  ended = np.array([False] * 200 + [True] * 200)
  ids = enc.tokenizer(codes, ended)
  batch = enc.batch(ids, rng)
  real = enc.is_nucleotides_V[ids]
  selected = batch["targets"] >= 0
  assert not selected[~real].any()  # never CLS, SEP, PAD or UNK
  np.testing.assert_array_equal(batch["targets"][selected], ids[selected])
  share = selected.sum() / real.sum()
  assert 0.14 < share < 0.16
  masked = (batch["inputs"] == encodings.MASK) & selected
  changed = (batch["inputs"] != ids) & selected & ~masked
  assert 0.78 < masked.sum() / selected.sum() < 0.82
  # random replacement: 10% of the selected, 1/64 of which redraw their own token
  assert 0.085 < changed.sum() / selected.sum() < 0.11
  assert (batch["inputs"][changed] >= encodings.N_SPECIAL).all()
  np.testing.assert_array_equal(batch["inputs"][~selected], ids[~selected])


def test_nucleotide_accuracy_hand_computed():
  """Two selected 3-mer positions: true AAC (6) predicted AAG (7) -> 2 of 3 nucleotides;
  true TTT (68) predicted TTT -> 3 of 3. Token accuracy 1/2, per-nucleotide 5/6."""
  table = jnp.asarray(encodings.KmerTokenizer(3, 4).token_nucleotides())
  logits = jnp.full((1, 4, 69), -10.0).at[0, 1, 7].set(5).at[0, 2, 68].set(5).at[0, 3, 1].set(5)
  targets = jnp.array([[-1, 6, 68, -1]])
  sums = model_lib.mlm_loss(logits, targets, 0.0, table)
  assert float(sums["correct"]) == 1 and float(sums["count"]) == 2
  assert float(sums["nuc_correct"]) == 5 and float(sums["nuc_count"]) == 6


def test_label_smoothing_matches_pytorch_semantics():
  logits = jnp.array([[[2.0, 0.5, -1.0, 0.0]]])
  targets = jnp.array([[0]])
  logp = jax.nn.log_softmax(logits[0, 0])
  want = 0.9 * -logp[0] + 0.1 * -jnp.mean(logp)
  sums = model_lib.mlm_loss(logits, targets, 0.1)
  np.testing.assert_allclose(float(sums["train_sum"]), float(want), rtol=1e-6)
  np.testing.assert_allclose(float(sums["loss_sum"]), float(-logp[0]), rtol=1e-6)


@pytest.mark.parametrize("kw, base, total", [
    (dict(encoding_method="kmer", k=3), 85_108_992, 85_162_053),
    (dict(encoding_method="kmer", k=6), 88_205_568, 91_359_237),
    (dict(encoding_method="nuc"), 85_062_912, 85_069_833),
    (dict(encoding_method="bpe", bpe_vocab_size=4096), 88_201_728, 91_351_552),
    (dict(encoding_method="bpe", bpe_vocab_size=256), 85_252_608, 85_449_472),
])
def test_token_parameter_counts(kw, base, total):
  params = train.abstract_params(Config("t", "v", **kw))
  count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
  assert count(params) == total
  assert count(params["embedding"]) + count(params["encoder"]) == base


def test_token_shapes():
  """15.3: token batch (8, 768) -> logits (8, 768, V)."""
  cfg = Config("t", "v", encoding_method="kmer", k=3)
  m = model_lib.build(cfg)
  out = jax.eval_shape(lambda p, x: m.apply({"params": p}, x), train.abstract_params(cfg),
                       jax.ShapeDtypeStruct((8, 768), jnp.int32))
  assert out.shape == (8, 768, 69)


def test_bpe_fit_then_pretrain(tmp_path):
  """Fit a BPE model with the command, then pre-train with it."""
  t = write_fasta(tmp_path / "t.fa", random_seqs(60, 100, 400, seed=3))
  v = write_fasta(tmp_path / "v.fa", random_seqs(20, 100, 400, seed=4))
  env = {k: val for k, val in os.environ.items() if k != "XLA_FLAGS"}
  out = subprocess.run([sys.executable, "-m", "nlm_jax.bpe", "t.fa", "40"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  assert "wrote features/40.bpe: 40 pieces" in out.stdout
  tok = encodings.BpeTokenizer(str(tmp_path / "features" / "40.bpe"), 16)
  assert tok.vocab_size == 40 and tok.sp.encode("ACGT") and tok.is_nucleotides[5:].all()
  cfg = Config(t, v, encoding_method="bpe", bpe_file=str(tmp_path / "features" / "40.bpe"),
               bpe_vocab_size=40, d_model=32, N=1, h=2, context_length=16, batch_size=8,
               warmup_steps=4, n_samples_per_epoch=16, epochs=1, results_dir=str(tmp_path / "R"),
               model_dir=str(tmp_path / "M"))
  rows = train.run(cfg, devices=RUN_DEVICES)
  assert np.isfinite(rows[0]["Loss|valid"]) and 0 <= rows[0]["NucAccuracy|valid"] <= 1
  assert cfg.exp_name == "MLM_bpe_vs40_dm32_N1_h2_bs8_ws4_cl16_d0"
  # The model folder keeps a copy of the BPE model: it loads after the original is gone.
  import nlm_jax
  seqs = random_seqs(3, 20, 60, seed=5)
  before = nlm_jax.load(cfg.checkpoint_path, devices=RUN_DEVICES).embed(seqs)
  os.remove(tmp_path / "features" / "40.bpe")
  after = nlm_jax.load(cfg.checkpoint_path, devices=RUN_DEVICES).embed(seqs)
  np.testing.assert_array_equal(after, before)


def test_bpe_fit_refuses_to_overwrite(tmp_path):
  path = tmp_path / "x.bpe"
  path.write_bytes(b"keep")
  fa = write_fasta(tmp_path / "t.fa", random_seqs(5, 50, 60))
  with pytest.raises(bpe.UserError, match="already exists"):
    bpe.fit(fa, 20, str(path))
  assert path.read_bytes() == b"keep"


def skewed_seqs(n, seed, share=0.55):
  """Each sequence draws `share` of its nucleotides from one letter, its own, and the rest
  evenly from the other three: a window's other tokens tell a masked one."""
  rng = np.random.default_rng(seed)
  seqs = []
  for _ in range(n):
    p = np.full(4, (1 - share) / 3)
    p[rng.integers(4)] = share
    seqs.append("".join(rng.choice(list("ACGT"), rng.integers(150, 901), p=p)))
  return seqs


@pytest.fixture(scope="module")
def skewed_data(tmp_path_factory):
  folder = tmp_path_factory.mktemp("skewed")
  train_fa = write_fasta(folder / "train.fa", skewed_seqs(800, seed=0))
  valid_fa = write_fasta(folder / "valid.fa", skewed_seqs(200, seed=1))
  bpe.fit(train_fa, 64, str(folder / "64.bpe"))
  return folder, train_fa, valid_fa


@pytest.mark.parametrize("kw", [dict(encoding_method="nuc"), dict(encoding_method="kmer", k=3),
                                dict(encoding_method="bpe", bpe_vocab_size=64)])
def test_each_token_encoding_learns_above_chance(skewed_data, kw):
  """Chance: always predicting the most frequent target token of the validation set.

  The data's signal is in each window's composition, which a tiny model learns in a few
  hundred steps. (On the demo's planted motifs it learned to copy the inputs that masking
  keeps, and predicted one letter where they were masked, for thousands of steps: the
  nuc model passed or failed with the letter it happened to settle on.)"""
  folder, train_fa, valid_fa = skewed_data
  name = kw["encoding_method"]
  cfg = Config(train_fa, valid_fa, bpe_file=str(folder / "64.bpe"), d_model=64, N=2, h=4,
               context_length=64, batch_size=16, warmup_steps=100, n_samples_per_epoch=2000,
               epochs=3, results_dir=str(folder / f"R_{name}"), model_dir=str(folder / f"M_{name}"),
               **kw)
  rows = train.run(cfg, devices=RUN_DEVICES)
  indices = sampler.eval_indices(200, cfg.n_eval, cfg.valid_seed)  # the run's validation set
  valid = sampler.eval_set(fasta_lib.Fasta(valid_fa), indices, sampler.encoding_for(cfg),
                           seed=cfg.seed + 1)
  targets = valid["targets"][valid["targets"] >= 0]
  chance = np.bincount(targets).max() / len(targets)
  last = rows[-1]
  print(name, f"chance {chance:.3f}", last)
  assert last["Accuracy|valid"] > chance + 0.05, (chance, rows)
  assert last["Loss|valid"] < rows[0]["Loss|valid"]
