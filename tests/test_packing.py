"""--packing: several sequences a training row, each as it would be in a row of its own.

The equivalence tests pack a sampler's batch, unpack every sequence into a row of its own
(the same windows and masks), and compare the logits at every real position, each
sequence's loss sum and the gradient of the batch's loss (fp32, dropout off). They fail
without the attention mask or the position restart (checked at the end of each).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import random_seqs, shared_path, write_fasta
from nlm_jax import encodings, fasta as fasta_lib, model as model_lib, sampler, train
from nlm_jax.config import Config, UserError


@pytest.fixture(scope="module")
def fasta_path(tmp_path_factory):
  folder = tmp_path_factory.mktemp("packing")
  return write_fasta(folder / "train.fa", random_seqs(60, 4, 150, seed=3))


def config(path, **kw):
  base = dict(d_model=32, n_kernels=32, N=2, h=4, kernel_size=3, context_length=48, batch_size=4,
              n_samples_per_epoch=40, packing=True, encoder_dropout=0.0, dropout=0.0,
              precision="fp32", attention="xla", k=2)
  return Config(path, path, **{**base, **kw}).validate()


def unpack(batch, cfg, encoding):
  """Each sequence of a packed batch in a row of its own: (inputs, targets) rows and, per
  sequence, (packed row, its positions in the packed row, its positions in its own row)
  in model positions L and in input positions."""
  per, skip = encoding.inputs_per_position, 0 if encoding.cls_in_inputs else 1
  width = batch["inputs"].shape[1]
  empty = encoding.empty_rows(1)
  rows, places = {"inputs": [], "targets": []}, []
  for r, segments in enumerate(batch["segments"]):
    for s in range(1, segments.max() + 1):
      at = np.flatnonzero(segments == s)
      n = len(at)
      a = at[0] * per  # the sequence's first input after its CLS (conv) or its CLS (tokens)
      inputs, targets = empty["inputs"][0].copy(), empty["targets"][0].copy()
      inputs[:(n - skip) * per] = batch["inputs"][r, a:a + (n - skip) * per]
      targets[:(n - skip) * per] = batch["targets"][r, a:a + (n - skip) * per]
      rows["inputs"].append(inputs)
      rows["targets"].append(targets)
      places.append((r, np.arange(a, a + (n - skip) * per), np.arange((n - skip) * per)))
  assert width == len(rows["inputs"][0])
  return {k: np.stack(v) for k, v in rows.items()}, places


def forward_and_grads(cfg, params, batch, packed):
  model = model_lib.build(cfg)

  def loss(p):
    logits = model.apply({"params": p}, jnp.asarray(batch["inputs"]), packed=packed)
    return model_lib.mlm_loss(logits, jnp.asarray(batch["targets"]))["loss_sum"], logits

  (total, logits), grads = jax.value_and_grad(loss, has_aux=True)(params)
  return np.asarray(logits), grads


def per_sequence_loss(logits_row, targets_row):
  sums = model_lib.mlm_loss(jnp.asarray(logits_row)[None], jnp.asarray(targets_row)[None])
  return float(sums["loss_sum"])


@pytest.mark.parametrize("encoding_method", ["conv", "kmer"])
def test_packed_rows_compute_what_rows_of_their_own_compute(fasta_path, encoding_method):
  cfg = config(fasta_path, encoding_method=encoding_method)
  encoding = sampler.encoding_for(cfg)
  train_sampler = sampler.TrainSampler(fasta_lib.Fasta(fasta_path), cfg, encoding)
  packed_batch = next(b for b in train_sampler.epoch(0) if b["segments"].max() >= 3)
  rows, places = unpack(packed_batch, cfg, encoding)
  params = model_lib.build(cfg).init(jax.random.key(0), model_lib.dummy_inputs(cfg))["params"]
  packed = model_lib.Packed(jnp.asarray(packed_batch["segments"]), jnp.asarray(packed_batch["positions"]))

  logits_p, grads_p = forward_and_grads(cfg, params, packed_batch, packed)
  logits_u, grads_u = forward_and_grads(cfg, params, rows, None)
  # Logits per input position (a nucleotide for conv, a token for k-mers).
  for i, (r, packed_at, own_at) in enumerate(places):
    np.testing.assert_allclose(logits_p[r, packed_at], logits_u[i, own_at], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        per_sequence_loss(logits_p[r, packed_at], packed_batch["targets"][r, packed_at]),
        per_sequence_loss(logits_u[i, own_at], rows["targets"][i, own_at]), rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves(grads_p), jax.tree.leaves(grads_u), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)

  # Without the attention mask or the restart of positions, packed rows differ: the
  # comparison above can fail.
  real = packed_batch["segments"] > 0
  one_sequence = model_lib.Packed(jnp.asarray(real.astype(np.int32)), packed.positions)
  no_restart = model_lib.Packed(packed.segments, jnp.broadcast_to(
      jnp.arange(real.shape[1]), real.shape))
  for broken in (one_sequence, no_restart):
    logits_b, _ = forward_and_grads(cfg, params, packed_batch, broken)
    worst = max(np.abs(logits_b[r, at] - logits_u[i, own]).max() for i, (r, at, own) in enumerate(places))
    assert worst > 1e-3


@pytest.mark.parametrize("implementation", ["xla", "reference"])
def test_no_attention_weight_crosses_sequences(implementation):
  rng = np.random.default_rng(0)
  segments = jnp.asarray([[1, 1, 1, 2, 2, 3, 0, 0], [1, 1, 1, 1, 1, 1, 1, 2]], jnp.int32)
  q, k, v = (jnp.asarray(rng.normal(size=(2, 8, 2, 4)), jnp.float32) for _ in range(3))
  out = model_lib.attention(q, k, v, None, implementation, segments)
  # Keys and values of every other sequence replaced: each sequence's output stays.
  for b in range(2):
    for s in (1, 2, 3):
      others = (segments[b] != s)[None, :, None, None]
      k2 = jnp.where(others, k[b:b + 1] * 7 + 3, k[b:b + 1])
      v2 = jnp.where(others, -v[b:b + 1] + 5, v[b:b + 1])
      out2 = model_lib.attention(q[b:b + 1], k2, v2, None, implementation, segments[b:b + 1])
      mine = np.asarray(segments[b] == s)
      np.testing.assert_allclose(out2[0][mine], out[b][mine], rtol=1e-6, atol=1e-6)
  reference = model_lib.attention(q, k, v, None, "reference", segments)
  real = np.asarray(segments > 0)
  np.testing.assert_allclose(np.asarray(out)[real], np.asarray(reference)[real], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("encoding_method", ["conv", "kmer", "nuc", "bpe"])
def test_an_epoch_packs_every_drawn_sequence_once_into_rows_that_fit(fasta_path, encoding_method):
  kw = {"bpe_file": shared_path("data", "lncrnapy_256.bpe")} if encoding_method == "bpe" else {}
  cfg = config(fasta_path, encoding_method=encoding_method, **kw)
  if encoding_method == "bpe":
    cfg = dataclasses.replace(cfg, bpe_vocab_size=encodings.BpeTokenizer(cfg.bpe_path, 48).vocab_size)
  encoding = sampler.encoding_for(cfg)
  fa = fasta_lib.Fasta(fasta_path)
  packed = sampler.TrainSampler(fa, cfg, encoding)
  plain = sampler.TrainSampler(fa, dataclasses.replace(cfg, packing=False), encoding)
  steps = packed.steps_in(0)
  assert steps < plain.steps_in(0) == 10  # 40 sequences in fewer steps than 40 / 4
  drawn = np.concatenate([packed.indices(0, s) for s in range(steps)])
  np.testing.assert_array_equal(drawn, plain.order(0))  # the same sequences, in order
  sequences = real = capacity = 0
  for step in range(steps):
    batch = packed.batch(0, step)
    segments, positions = batch["segments"], batch["positions"]
    sequences += encoding.n_sequences(batch)
    for r in range(cfg.batch_size):
      n_seq = segments[r].max()
      # Sequences one after another from the row's start, each from its CLS (position 0).
      assert np.array_equal(np.unique(segments[r][segments[r] > 0]), np.arange(1, n_seq + 1))
      starts = np.flatnonzero(positions[r] == 0)[:n_seq]
      assert np.all(np.diff(segments[r][segments[r] > 0]) >= 0)
      assert len(starts) == n_seq and (segments[r][starts] == np.arange(1, n_seq + 1)).all()
      if encoding.cls_in_inputs:
        assert (batch["inputs"][r][starts] == encodings.CLS).all()
    real += encoding.real_nucleotides(batch)
  assert sequences == cfg.n_samples_per_epoch
  if encoding_method == "conv":  # every conv position is kernel_size nucleotides
    capacity = steps * cfg.batch_size * cfg.n_nucleotides
    windows = np.minimum(fa.lengths[drawn], cfg.n_nucleotides)  # less a frame shift of < ks
    assert windows.sum() - (cfg.kernel_size - 1) * len(drawn) <= real <= windows.sum()
    unpacked = sum(encoding.real_nucleotides(plain.batch(0, s)) for s in range(10))
    assert real / capacity > max(0.7, 1.5 * unpacked / (10 * cfg.batch_size * cfg.n_nucleotides))


def test_packed_masks_follow_lncrnapy_counts_per_sequence(fasta_path):
  """conv: int(p_mlm / mask_size * n) spans over each sequence's n nucleotides (its window
  padded to whole kernels), not over the row's: with p_mask 1 a sequence that fills its
  windows has exactly int(p_mlm * n) targets, all masked (N)."""
  cfg = config(fasta_path, p_mlm=0.3, p_mask=1.0, p_random=0.0)
  encoding = sampler.encoding_for(cfg)
  ks, exact = cfg.kernel_size, 0
  for batch in sampler.TrainSampler(fasta_lib.Fasta(fasta_path), cfg, encoding).epoch(0):
    for r, segments in enumerate(batch["segments"]):
      for s in range(1, segments.max() + 1):
        at = np.flatnonzero(segments == s)
        codes = slice(at[0] * ks, at[-1] * ks)  # the windows of positions at[0] + 1 ... at[-1]
        n = codes.stop - codes.start
        inputs, targets = batch["inputs"][r, codes], batch["targets"][r, codes]
        assert (inputs[targets >= 0] == fasta_lib.N).all()
        selected, pad = np.count_nonzero(targets >= 0), np.count_nonzero(inputs == fasta_lib.PAD)
        # Spans may fall on the padding of a partial last window: then fewer are targets.
        assert int(cfg.p_mlm * n) - pad <= selected <= int(cfg.p_mlm * n)
        exact += selected == int(cfg.p_mlm * n) and not pad
  assert exact >= 10


def test_hosts_share_a_packed_batch(fasta_path):
  """A packed batch is a function of (seed, epoch, step, row): two hosts make its halves."""
  cfg = config(fasta_path)
  encoding = sampler.encoding_for(cfg)
  fa = fasta_lib.Fasta(fasta_path)
  whole = sampler.TrainSampler(fa, cfg, encoding).batch(0, 2)
  halves = [sampler.TrainSampler(fa, cfg, encoding, i, 2).batch(0, 2) for i in range(2)]
  for key, value in whole.items():
    np.testing.assert_array_equal(value, np.concatenate([h[key] for h in halves]))


def test_packing_is_for_pre_training(fasta_path):
  with pytest.raises(UserError, match="--packing"):
    Config(fasta_path, fasta_path, task="cls", fasta_nc_train=fasta_path, fasta_nc_valid=fasta_path,
           packing=True).validate()
  assert config(fasta_path).exp_name.endswith("--packed")


def test_packed_training_learns_and_resumes(tmp_path):
  """A tiny conv model with --packing learns the synthetic motifs (above chance), and a run
  stopped after its first epoch goes on to the same history."""
  from nlm_jax import synthetic

  synthetic.write_demo(str(tmp_path / "d"), 300, 60)
  kw = dict(d_model=32, n_kernels=32, N=1, h=2, kernel_size=9, context_length=64, batch_size=8,
            n_samples_per_epoch=240, warmup_steps=20, packing=True, n_eval=60,
            model_dir=str(tmp_path / "M"), results_dir=str(tmp_path / "R"))
  data = (str(tmp_path / "d" / "train.fasta"), str(tmp_path / "d" / "valid.fasta"))
  devices = jax.devices()[:2]
  rows = train.run(Config(*data, epochs=3, **kw).validate(), devices=devices)
  assert rows[-1]["Accuracy|valid"] > 0.3
  first = train.run(Config(*data, epochs=1, fresh=True, **kw).validate(), devices=devices)
  resumed = train.run(Config(*data, epochs=3, **kw).validate(), devices=devices)
  assert first == rows[:1] and resumed == rows
