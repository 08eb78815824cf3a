import numpy as np
import pytest

from conftest import random_seqs, shared_path, write_fasta
from nlm_jax import bpe, encodings, fasta as fasta_lib
from nlm_jax import sampler
from nlm_jax.config import Config

# original-behaviour.md 15.2: (ks, cl, mask_size) -> (n_sel, masked, random, kept) indices.
COUNTS = [
    (9, 768, 1, 1035, 828, 103, 104), (9, 768, 2, 517, 826, 102, 106),
    (9, 768, 3, 345, 828, 102, 105), (9, 768, 9, 115, 828, 99, 108),
    (10, 768, 1, 1150, 920, 115, 115), (3, 768, 1, 345, 276, 34, 35),
    (4, 768, 1, 460, 368, 46, 46), (6, 768, 1, 690, 552, 69, 69),
    (7, 768, 1, 805, 644, 80, 81), (9, 32, 1, 41, 32, 4, 5), (9, 64, 1, 85, 68, 8, 9),
    (3, 16, 1, 6, 4, 0, 2),
]


def cfg_for(**kw):
  return Config("t.fa", "v.fa", **kw)


@pytest.mark.parametrize("ks, cl, m, n_sel, n_masked, n_random, n_kept", COUNTS)
def test_masking_counts_match_reference(ks, cl, m, n_sel, n_masked, n_random, n_kept):
  n = (cl - 1) * ks
  masked, random, kept = sampler.span_indices(np.random.default_rng(0), 2, n, 0.15, 0.8, 0.1, m)
  assert masked.shape == (2, n_masked)
  assert random.shape == (2, n_random)
  assert kept.shape == (2, n_kept)
  assert n_masked + n_random + n_kept == n_sel * m
  starts = np.concatenate([masked, random, kept], axis=1)[:, ::m]
  assert all(len(np.unique(row)) == n_sel for row in starts)  # distinct span starts


def test_full_row_mask_counts_on_a_batch():
  """ks 9, cl 768, m 1, a row without padding: 1035 targets, 828 masked, 103 random."""
  cfg = cfg_for(kernel_size=9, context_length=768)
  codes = np.random.default_rng(1).integers(0, 4, (4, cfg.n_nucleotides)).astype(np.uint8)
  batch = sampler.mask_conv(codes, np.random.default_rng(2), cfg)
  assert ((batch["targets"] >= 0).sum(axis=1) == 1035).all()
  assert ((batch["inputs"] == fasta_lib.N).sum(axis=1) == 828).all()
  # Random positions draw one of four nucleotides: a quarter keep theirs.
  changed = ((batch["inputs"] != codes) & (batch["inputs"] != fasta_lib.N)).sum()
  assert 0.6 * 103 * 4 < changed < 0.9 * 103 * 4
  selected = batch["targets"] >= 0
  np.testing.assert_array_equal(batch["targets"][selected], codes[selected])
  np.testing.assert_array_equal(batch["inputs"][~selected], codes[~selected])


def test_span_expansion_example():
  """15.2: indices [0, 5, 9], m = 3, len_out = 10 -> [0, 1, 2, 5, 6, 7, 9, 9, 9]."""
  np.testing.assert_array_equal(sampler.expand_spans(np.array([[0, 5, 9]]), 3, 10),
                                [[0, 1, 2, 5, 6, 7, 9, 9, 9]])


def test_unique_counts_with_overlapping_spans():
  """15.2: for m = 3 on a full row, ~990 unique selected and ~798 unique masked."""
  cfg = cfg_for(kernel_size=9, context_length=768, mask_size=3)
  codes = np.random.default_rng(1).integers(0, 4, (200, cfg.n_nucleotides)).astype(np.uint8)
  batch = sampler.mask_conv(codes, np.random.default_rng(3), cfg)
  assert abs((batch["targets"] >= 0).sum(axis=1).mean() - 990) < 10
  assert abs((batch["inputs"] == fasta_lib.N).sum(axis=1).mean() - 798) < 10


def test_short_rows_select_in_proportion_and_never_padding_or_n():
  """15.2: rows of 6000 / 1000 / 100 real nucleotides get ~1035 n / 6903 targets; padding
  and N are never targets (a deliberate difference for N)."""
  cfg = cfg_for(kernel_size=9, context_length=768)
  rng = np.random.default_rng(4)
  lengths = np.array([6000, 1000, 100] * 300)
  codes = np.full((len(lengths), cfg.n_nucleotides), fasta_lib.PAD, np.uint8)
  for row, n in enumerate(lengths):
    codes[row, :n] = rng.integers(0, 5, n)  # N among the letters
  batch = sampler.mask_conv(codes, rng, cfg)
  targets = batch["targets"]
  assert (targets[codes >= fasta_lib.N] == sampler.IGNORE).all()
  np.testing.assert_array_equal(batch["inputs"][codes == fasta_lib.PAD], fasta_lib.PAD)
  for n in (6000, 1000, 100):
    acgt = (codes[lengths == n] < 4).sum(axis=1).mean()
    expected = 1035 * acgt / cfg.n_nucleotides
    got = (targets[lengths == n] >= 0).sum(axis=1).mean()
    assert abs(got - expected) < 0.05 * expected + 1


def test_windows_eval_is_the_5prime_start():
  start, stop = sampler.windows(np.array([5, 100, 700]), 567, None, 9, True)
  np.testing.assert_array_equal(start, [0, 0, 0])
  np.testing.assert_array_equal(stop, [5, 100, 567])


def test_windows_train_cover_long_sequences_and_shift_short_ones():
  rng = np.random.default_rng(0)
  lengths = np.array([2000] * 5000 + [100] * 5000 + [3] * 5000)
  start, stop = sampler.windows(lengths, 567, rng, 9, True)
  long, short, tiny = start[:5000], start[5000:10000], start[10000:]
  assert long.min() == 0 and long.max() > 1400 and (long <= 2000 - 567).all()
  assert (stop[:5000] - long == 567).all()
  np.testing.assert_array_equal(np.unique(short), np.arange(9))  # shifts 0..ks-1, uniform
  assert np.bincount(short).min() > 450
  np.testing.assert_array_equal(np.unique(tiny), [0, 1, 2])  # never the whole sequence
  assert (stop - start >= 1).all()


def test_windows_without_random_frame_keep_the_frame():
  rng = np.random.default_rng(0)
  start, _ = sampler.windows(np.array([2000] * 1000 + [100] * 1000), 567, rng, 9, False)
  assert (start % 9 == 0).all()
  assert (start[1000:] == 0).all()
  assert start[:1000].max() > 1000


def test_epoch_order_is_lncrnapy_random_sampler():
  rng = np.random.default_rng(0)
  order = sampler.epoch_order(7, 17, rng)
  assert len(order) == 17
  for part in (order[:7], order[7:14]):
    np.testing.assert_array_equal(np.sort(part), np.arange(7))
  assert len(set(order[14:])) == 3


def test_validation_subset_reference():
  """15.7: rows RandomState(42).permutation(2686)[:2500] of the GENCODE file."""
  idx = sampler.eval_indices(2686, 2500, 42)
  np.testing.assert_array_equal(idx[:10], [655, 862, 365, 2424, 1763, 175, 620, 1411, 1412, 2582])
  np.testing.assert_array_equal(idx[-5:], [835, 2294, 1439, 1733, 1695])
  excluded = np.setdiff1d(np.arange(2686), idx)
  np.testing.assert_array_equal(excluded[:10], [1, 21, 34, 64, 95, 130, 161, 189, 200, 201])
  fa = fasta_lib.Fasta(shared_path("data", "gencode_human_lncrna.fasta"))
  assert len(fa) == 2686
  assert fa.lengths[idx].sum() == 3_454_916


def test_fewer_validation_records_use_all():
  assert sorted(sampler.eval_indices(30, 2500, 42)) == list(range(30))


@pytest.mark.parametrize("n_train, n_valid, n_eval, sizes", [
    (2186, 500, 2500, (500, 500)),  # the training subset is as large as the validation one
    (2186, 3000, 2500, (2186, 2500)),  # at most all training records
    (100, 500, 2500, (100, 500)),
    (2186, 500, 200, (200, 200)),  # --n_eval sets both
    (5000, 5000, 2500, (2500, 2500)),  # lncRNA-Py's sizes
])
def test_eval_sizes_follow_lncrnapy(n_train, n_valid, n_eval, sizes):
  assert sampler.eval_sizes(n_train, n_valid, n_eval) == sizes


def test_real_nucleotides_exclude_padding_and_special_tokens(tmp_path):
  """Conv: every position but padding, masked ones included. k-mers: k per real token
  before masking (a masked token's nucleotides come from its target), none for CLS/SEP/PAD."""
  fa = fasta_lib.Fasta(write_fasta(tmp_path / "s.fa", ["ACGTACGTAC", "ACG"]))
  cfg = cfg_for(kernel_size=3, context_length=8, p_mlm=0.5)
  conv = sampler.ConvEncoding(cfg)
  batch = sampler.eval_set(fa, np.arange(2), conv, seed=0)
  assert (batch["targets"] >= 0).any() and batch["inputs"].shape == (2, 21)
  assert conv.real_nucleotides(batch) == 10 + 3
  kcfg = cfg_for(encoding_method="kmer", k=3, context_length=8, p_mlm=0.5)
  kmer = sampler.encoding_for(kcfg)
  batch = sampler.eval_set(fa, np.arange(2), kmer, seed=0)
  assert (batch["inputs"] == 0).any()  # some tokens are masked
  assert kmer.real_nucleotides(batch) == 3 * 3 + 3  # ACG TAC GTA (C: no token), ACG


@pytest.fixture
def train_fa(tmp_path):
  return fasta_lib.Fasta(write_fasta(tmp_path / "t.fa", random_seqs(50, 5, 400)))


def test_batches_are_a_pure_function_of_seed_epoch_step(train_fa):
  cfg = cfg_for(kernel_size=3, context_length=32, batch_size=8, n_samples_per_epoch=60)
  a = sampler.TrainSampler(train_fa, cfg, sampler.ConvEncoding(cfg))
  b = sampler.TrainSampler(train_fa, cfg, sampler.ConvEncoding(cfg))
  for epoch, step in [(0, 0), (0, 5), (3, 2)]:
    for k, v in a.batch(epoch, step).items():
      np.testing.assert_array_equal(v, b.batch(epoch, step)[k])
  assert not np.array_equal(a.batch(0, 0)["inputs"], a.batch(1, 0)["inputs"])
  cfg1 = cfg_for(kernel_size=3, context_length=32, batch_size=8, n_samples_per_epoch=60, seed=1)
  other = sampler.TrainSampler(train_fa, cfg1, sampler.ConvEncoding(cfg1))
  assert not np.array_equal(a.batch(0, 0)["inputs"], other.batch(0, 0)["inputs"])


def test_short_last_batch_is_filled_with_rows_without_targets(train_fa):
  cfg = cfg_for(kernel_size=3, context_length=32, batch_size=8, n_samples_per_epoch=60)
  s = sampler.TrainSampler(train_fa, cfg, sampler.ConvEncoding(cfg))
  assert s.steps_per_epoch == 8
  last = s.batch(0, 7)
  assert last["inputs"].shape == (8, 93)
  assert (last["targets"][4:] == sampler.IGNORE).all()
  assert (last["inputs"][4:] == fasta_lib.PAD).all()
  assert (last["targets"][:4] >= 0).any()


def test_host_shares_are_disjoint_and_form_the_global_batch(train_fa):
  """Each of 4 hosts draws its rows of the global batch: together they are the
  epoch's indices for that step, without overlap."""
  cfg = cfg_for(kernel_size=3, context_length=32, batch_size=8, n_samples_per_epoch=64)
  order = sampler.epoch_order(50, 64, sampler.rng_for("order", cfg.seed, 0))
  hosts = [sampler.TrainSampler(train_fa, cfg, sampler.ConvEncoding(cfg), process_index=p,
                                process_count=4) for p in range(4)]
  for step in range(3):
    parts = [h.batch(0, step) for h in hosts]
    assert all(p["inputs"].shape == (2, 93) for p in parts)
    # Rows without a random draw to compare: each host's batch comes from its own indices.
    assert len({p["inputs"].tobytes() for p in parts}) == 4
    drawn = [h.indices(0, step) for h in hosts]
    np.testing.assert_array_equal(np.concatenate(drawn), order[step * 8:(step + 1) * 8])


@pytest.mark.parametrize("encoding", [dict(kernel_size=3), dict(encoding_method="kmer", k=2)])
def test_a_row_of_the_global_batch_is_the_same_for_1_2_and_4_hosts(train_fa, encoding):
  """Each row draws from a generator keyed by its row of the global batch, not of a
  host's share, and every row has its own."""
  cfg = cfg_for(context_length=32, batch_size=8, n_samples_per_epoch=64, **encoding)
  shares = {}
  for n_hosts in (1, 2, 4):
    hosts = [sampler.TrainSampler(train_fa, cfg, sampler.encoding_for(cfg), p, n_hosts)
             for p in range(n_hosts)]
    shares[n_hosts] = [sampler.concat([h.batch(epoch, step) for h in hosts])
                       for epoch, step in [(0, 0), (1, 3)]]
  for n_hosts in (2, 4):
    for whole, joined in zip(shares[1], shares[n_hosts]):
      for k in whole:
        np.testing.assert_array_equal(joined[k], whole[k], err_msg=f"{n_hosts} hosts, {k}")


@pytest.mark.parametrize("flag, frames", [(False, {"AAC", "ACA", "CAA"}), (True, {"AAC"})])
def test_kmer_windows_start_in_a_random_reading_frame_unless_turned_off(tmp_path, flag, frames):
  """3-mers of AACAACAAC... read AAC in frame 0, ACA in 1, CAA in 2: a row's most common
  input token says the frame of its window."""
  fa = fasta_lib.Fasta(write_fasta(tmp_path / "aac.fa", ["AAC" * 300]))
  cfg = cfg_for(encoding_method="kmer", k=3, context_length=16, batch_size=64,
                n_samples_per_epoch=64, no_random_reading_frame=flag)
  enc = sampler.encoding_for(cfg)
  inputs = sampler.TrainSampler(fa, cfg, enc).batch(0, 0)["inputs"]
  tok = enc.tokenizer
  names = {int(tok.tokenize(t)[1]): t for t in ("AAC", "ACA", "CAA")}
  seen = {names[int(np.bincount(row[1:]).argmax())] for row in inputs}
  assert seen == frames


@pytest.fixture(scope="module")
def fitted_bpe(tmp_path_factory):
  folder = tmp_path_factory.mktemp("bpe")
  fit_fa = write_fasta(folder / "fit.fa", random_seqs(40, 200, 400, seed=7))
  bpe.fit(fit_fa, 40, str(folder / "40.bpe"))
  return str(folder / "40.bpe")


@pytest.mark.parametrize("model", ["fitted", "lncrnapy_256"])
def test_bpe_training_rows_reach_the_3prime_end(tmp_path, fitted_bpe, model):
  """A BPE training row is a run of consecutive pieces of the whole sequence, from any
  piece on, so the last 10 nt of a long transcript are read. (Windows drawn in nucleotides
  held context_length - 1 of the longest pieces; their first context_length - 1 pieces
  never reached the 3' end.) A draw reads those nucleotides with probability p = (pieces
  ending in them) / (possible starts); every draw misses them with probability < 1e-6."""
  bpe_file = fitted_bpe if model == "fitted" else shared_path("data", "lncrnapy_256.bpe")
  long, short = random_seqs(1, 600, 600, seed=8)[0], "ACGTTGCA" * 2
  fa = fasta_lib.Fasta(write_fasta(tmp_path / "t.fa", [long, short]))
  cfg = cfg_for(encoding_method="bpe", bpe_file=bpe_file, context_length=32, batch_size=64,
                n_samples_per_epoch=64)
  enc = sampler.encoding_for(cfg)
  tok, n_pos = enc.tokenizer, cfg.context_length - 1
  whole, _, ends = tok.spans(fa.codes(0))
  p = np.sum(ends > len(long) - 10) / (len(whole) - n_pos + 1)
  s = sampler.TrainSampler(fa, cfg, enc)
  rows, read_to = [], []
  for epoch in range(40):
    batch = s.batch(epoch, 0)
    ids_BxL = np.where(batch["targets"] >= 0, batch["targets"], batch["inputs"])
    for i, row in zip(s.indices(epoch, 0), ids_BxL):
      if i == 1:  # the short one: all its pieces and SEP, as in evaluation
        np.testing.assert_array_equal(row, tok.tokenize(short))
        continue
      text = "".join(tok.pieces[t] for t in row if tok.is_nucleotides[t])
      read_to.append(long.find(text) + len(text))
      rows.append(row)
  assert (1 - p) ** len(rows) < 1e-6
  assert max(read_to) > len(long) - 10
  runs = np.lib.stride_tricks.sliding_window_view(whole, n_pos)
  for row in rows:  # full rows (no SEP) of consecutive pieces of the whole sequence
    assert row[0] == encodings.CLS and (runs == row[1:]).all(axis=1).any()


def test_each_use_of_randomness_has_its_own_stream():
  """SeedSequence pads a key with zeros: without a domain, the epoch's order (seed, epoch)
  and row 0 of step 0 (seed, epoch, 0, 0) would draw the same numbers."""
  order = sampler.rng_for("order", 0, 3).random(4)
  row = sampler.rng_for("row", 0, 3, 0, 0).random(4)
  assert not np.allclose(order, row)
  assert not np.allclose(sampler.rng_for("row", 0, 3).random(4), row)  # key length counts
  np.testing.assert_array_equal(sampler.rng_for("row", 0, 3, 0, 0).random(4), row)
