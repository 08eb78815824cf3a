import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nlm_jax import fasta as fasta_lib
from nlm_jax import model as model_lib
from nlm_jax import train
from nlm_jax.config import Config


def n_params(cfg):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(train.abstract_params(cfg)))


# original-behaviour.md 7.5 / 15.4 (counted without instantiating: jax.eval_shape).
@pytest.mark.parametrize("kw, expected", [
    (dict(kernel_size=9), 85_703_428),
    (dict(kernel_size=10), 85_709_572),
    (dict(kernel_size=3), 85_666_564),
    (dict(kernel_size=9, input_linear=True), 86_294_020),
    (dict(kernel_size=9, no_output_linear=True), 85_112_836),
])
def test_parameter_counts(kw, expected):
  assert n_params(Config("t", "v", **kw)) == expected


def test_encoder_and_block_counts():
  cfg = Config("t", "v", kernel_size=9)
  params = train.abstract_params(cfg)
  count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
  assert count(params["encoder"]) == 85_056_000
  assert count(params["encoder"]["blocks"]) == 12 * 7_087_872
  assert count(model_lib.unstack_blocks(params)["encoder"]["block_0"]) == 7_087_872
  assert count(params["stem"]) == 85_085_184 - 85_056_000
  assert count(params["head"]) == 618_244


def test_head_widths_are_right_when_d_model_differs_from_n_kernels():
  """The original's channel bug (14.1) made these configurations crash."""
  for kw in (dict(input_linear=True), dict(input_linear=True, no_output_linear=True)):
    cfg = Config("t", "v", d_model=32, n_kernels=12, N=1, h=2, kernel_size=3, context_length=9, **kw)
    m = model_lib.build(cfg)
    codes = jnp.zeros((2, cfg.n_nucleotides), jnp.uint8)
    params = jax.jit(m.init)(jax.random.key(0), codes)
    assert jax.jit(m.apply)(params, codes).shape == (2, 24, 4)


def test_shapes_at_reference_config():
  """15.3 at cl 768, ks 9, d 768, B 8 (abstractly): logits (8, 6903, 4)."""
  cfg = Config("t", "v", kernel_size=9, context_length=768)
  m = model_lib.build(cfg)
  codes = jax.ShapeDtypeStruct((8, 6903), jnp.uint8)
  params = train.abstract_params(cfg)
  assert jax.eval_shape(lambda p, c: m.apply({"params": p}, c), params, codes).shape == (8, 6903, 4)
  y, lengths = jax.eval_shape(lambda p, c: m.apply({"params": p}, c, method="embed"), params, codes)
  assert y.shape == (8, 768, 768) and lengths.shape == (8,)


def test_odd_lengths_are_trimmed_to_whole_windows():
  """15.3: a 100-nucleotide input with ks 9 gives 11 windows + CLS and 99 outputs."""
  cfg = Config("t", "v", d_model=16, n_kernels=16, N=1, h=2, kernel_size=9, context_length=12)
  m = model_lib.build(cfg)
  codes = jnp.zeros((2, 100), jnp.uint8)
  params = jax.jit(m.init)(jax.random.key(0), codes)
  assert jax.jit(m.apply)(params, codes).shape == (2, 99, 4)
  y, _ = m.apply(params, codes, method="embed")
  assert y.shape == (2, 12, 16)


def test_positional_encoding_values():
  pe = model_lib.sinusoidal(2, 64)
  np.testing.assert_allclose(pe[0, :4], [0, 1, 0, 1])
  np.testing.assert_allclose(pe[1, :4], [0.84147, 0.54030, 0.68156, 0.73176], atol=1e-5)


def test_attention_mask_counts_whole_windows_as_lncrnapy():
  """22 real nucleotides, ks 9: CLS and windows 1-2 attend, the partial third does not
  (original 15.3, CSEBERT.forward: int(22 / 9)); with attend_partial_window it does."""
  cfg = Config("t", "v", d_model=16, n_kernels=16, N=1, h=2, kernel_size=9, context_length=8)
  codes = np.full((1, cfg.n_nucleotides), fasta_lib.PAD, np.uint8)
  codes[0, :22] = 1
  stem = model_lib.ConvStem(cfg)
  params = stem.init(jax.random.key(0), codes)
  _, lengths = stem.apply(params, codes)
  assert int(lengths[0]) == 3  # CLS + 2 windows attend, positions 3..7 do not
  _, lengths = model_lib.ConvStem(dataclasses.replace(cfg, attend_partial_window=True)).apply(
      params, codes)
  assert int(lengths[0]) == 4
  codes[0, :] = fasta_lib.PAD
  _, lengths = stem.apply(params, codes)  # an empty row: CLS only, never a masked-out softmax
  assert int(lengths[0]) == 1
  codes[0, :5] = 4  # shorter than a kernel (N counts): CLS only, as lncRNA-Py
  _, lengths = stem.apply(params, codes)
  assert int(lengths[0]) == 1


def test_padding_does_not_change_outputs_at_real_positions():
  """The key mask works: the same sequence in a longer window (more padding after it)
  gives the same logits, while a different padding-free neighbour changes them."""
  cfg = Config("t", "v", d_model=32, n_kernels=32, N=2, h=4, kernel_size=3, context_length=16)
  m = model_lib.build(cfg)
  rng = np.random.default_rng(0)
  seq = rng.integers(0, 4, 20).astype(np.uint8)
  short = np.full((1, 30), fasta_lib.PAD, np.uint8)
  long = np.full((1, 45), fasta_lib.PAD, np.uint8)
  short[0, :20] = long[0, :20] = seq
  params = jax.jit(m.init)(jax.random.key(0), long)
  apply = jax.jit(m.apply)
  np.testing.assert_allclose(apply(params, short)[0, :21], apply(params, long)[0, :21], atol=1e-5)
  longer = long.copy()
  longer[0, 20:30] = rng.integers(0, 4, 10)  # more sequence, not padding: attention sees it
  assert not np.allclose(apply(params, longer)[0, :18], apply(params, long)[0, :18], atol=1e-3)


def test_one_hot_table():
  np.testing.assert_array_equal(model_lib.ONE_HOT[fasta_lib.N], [.25] * 4)
  np.testing.assert_array_equal(model_lib.ONE_HOT[fasta_lib.PAD], [0] * 4)
  np.testing.assert_array_equal(model_lib.ONE_HOT[:4], np.eye(4))


def test_init_bounds_follow_lncrnapy():
  """7.4: Glorot matrices in the base, PyTorch default uniform in the head, CLS +-sqrt(3/d)."""
  cfg = Config("t", "v", kernel_size=9, d_model=768, n_kernels=768, N=1, context_length=4)
  params = model_lib.build(cfg).init(jax.random.key(0), jnp.zeros((1, 27), jnp.uint8))["params"]
  bound = lambda x: float(jnp.max(jnp.abs(x)))
  assert 0.0600 < bound(params["encoder"]["blocks"]["q"]["kernel"]) <= 0.0625
  assert 0.0390 < bound(params["encoder"]["blocks"]["ff_in"]["kernel"]) <= 0.03953
  assert 0.0290 < bound(params["stem"]["conv"]["kernel"]) <= 0.02939
  assert 0.0600 < bound(params["stem"]["cls"]) <= 0.0625
  assert 0.0350 < bound(params["head"]["output_linear"]["kernel"]) <= 0.0361
  assert 0.16 < bound(params["head"]["deconv"]["kernel"]) <= 1 / 6


def test_fused_attention_matches_the_reference_on_padded_rows():
  """dot_product_attention (XLA here, cuDNN on GPUs) against the plain formula, with
  rows padded to different lengths: a path that ignored the padding would differ."""
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=(3, 40, 4, 16)), jnp.float32) for _ in range(3))
  lengths = jnp.array([40, 17, 1])
  want = model_lib.attention(q, k, v, lengths, "reference")
  implementations = ["auto", "xla"] + (["cudnn"] if jax.devices()[0].platform == "gpu" else [])
  for impl in implementations:
    np.testing.assert_allclose(model_lib.attention(q, k, v, lengths, impl), want, atol=2e-5,
                               err_msg=impl)
  # Keys past the length do not matter; in a full-length row they would.
  k2 = k.at[1, 17:].set(100.0)
  np.testing.assert_allclose(model_lib.attention(q, k2, v, lengths, "auto")[1], want[1], atol=2e-5)
  assert not np.allclose(model_lib.attention(q, k2, v, jnp.array([40, 40, 40]), "auto")[1],
                         want[1], atol=1e-2)


@pytest.mark.parametrize("encoding", ["conv", "nuc"])
def test_model_outputs_do_not_depend_on_the_attention_path(encoding):
  cfg = Config("t", "v", encoding_method=encoding, d_model=32, n_kernels=32, N=2, h=4,
               kernel_size=3, context_length=16)
  ref = dataclasses.replace(cfg, attention="reference")
  rng = np.random.default_rng(1)
  if encoding == "conv":
    x = np.full((2, cfg.n_nucleotides), fasta_lib.PAD, np.uint8)
    x[0], x[1, :10] = rng.integers(0, 5, cfg.n_nucleotides), rng.integers(0, 4, 10)
  else:
    x = np.full((2, 16), 3, np.int32)
    x[0], x[1, :5] = rng.integers(5, 9, 16), [1, 5, 6, 7, 2]
  params = jax.jit(model_lib.build(cfg).init)(jax.random.key(0), x)
  np.testing.assert_allclose(jax.jit(model_lib.build(cfg).apply)(params, x),
                             jax.jit(model_lib.build(ref).apply)(params, x), atol=1e-4)


def test_bf16_computes_in_bf16_with_float32_parameters_and_logits_close():
  cfg = Config("t", "v", d_model=32, n_kernels=32, N=2, h=4, kernel_size=3, context_length=16)
  bf16 = dataclasses.replace(cfg, precision="bf16")
  x = np.random.default_rng(2).integers(0, 4, (2, cfg.n_nucleotides)).astype(np.uint8)
  params = jax.jit(model_lib.build(bf16).init)(jax.random.key(0), x)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  out16 = jax.jit(model_lib.build(bf16).apply)(params, x)
  out32 = jax.jit(model_lib.build(cfg).apply)(params, x)
  y16, _ = model_lib.build(bf16).apply(params, x, method="embed")
  assert y16.dtype == jnp.bfloat16 and out32.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out16, np.float32), out32, atol=0.1)


def test_cudnn_request_falls_back_to_xla_with_one_log_line(caplog):
  """--attention cudnn where it does not apply (here: no GPU) computes XLA's attention and
  says why, once; "auto" off GPUs is XLA without a word."""
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=(2, 24, 2, 8)), jnp.bfloat16) for _ in range(3))
  lengths = jnp.array([24, 5])
  model_lib._FALLBACKS_LOGGED.clear()
  with caplog.at_level("WARNING"):
    got = [model_lib.attention(q, k, v, lengths, impl) for impl in ("cudnn", "cudnn", "auto")]
  want = model_lib.attention(q, k, v, lengths, "xla")
  for g in got:
    np.testing.assert_array_equal(np.asarray(g, np.float32), np.asarray(want, np.float32))
  if jax.default_backend() != "gpu":
    lines = [r.getMessage() for r in caplog.records if "cuDNN" in r.getMessage()]
    assert len(lines) == 1 and "no GPU" in lines[0], lines


@pytest.mark.parametrize("remat", ["block", "dots"])
def test_remat_changes_memory_not_results(remat):
  """Rematerialised blocks give the loss and gradients of the plain ones (same parameters,
  same dropout), and the step holds less memory at a size where activations dominate."""
  cfg = Config("t", "v", d_model=32, n_kernels=32, N=3, h=4, kernel_size=3, context_length=64)
  other = dataclasses.replace(cfg, remat=remat)
  x = np.random.default_rng(3).integers(0, 4, (4, cfg.n_nucleotides)).astype(np.uint8)
  params = jax.jit(model_lib.build(cfg).init)(jax.random.key(0), x)["params"]

  def loss_and_grads(c):
    def loss(p):
      logits = model_lib.build(c).apply({"params": p}, x, train=True,
                                        rngs={"dropout": jax.random.key(1)})
      return jnp.mean(logits.astype(jnp.float32) ** 2)
    f = jax.jit(jax.value_and_grad(loss))
    memory = f.lower(params).compile().memory_analysis().temp_size_in_bytes
    return f(params), memory

  (l0, g0), m0 = loss_and_grads(cfg)
  (l1, g1), m1 = loss_and_grads(other)
  np.testing.assert_allclose(l1, l0, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  assert m1 < m0, (m1, m0)


def test_bf16_keeps_the_residual_stream_in_float32():
  """Each block adds to a float32 stream (the original's autocast does too); only its
  matmuls and LayerNorm outputs are bf16."""
  cfg = Config("t", "v", d_model=32, n_kernels=32, N=1, h=4, kernel_size=3, context_length=16,
               precision="bf16")
  x = jnp.asarray(np.random.default_rng(4).normal(size=(2, 16, 32)), jnp.float32)
  block = model_lib.EncoderBlock(cfg)
  params = block.init(jax.random.key(0), x, jnp.array([16, 9]))
  y, _ = block.apply(params, x, jnp.array([16, 9]))
  assert y.dtype == jnp.float32
  text = jax.jit(lambda p, x: block.apply(p, x, jnp.array([16, 9]))).lower(params, x).as_text()
  assert "bf16" in text  # the matmuls


def test_train_flops_count_parameters_and_attention():
  """PaLM's count at BERT-base conv, batch 8: 6 * 85,709,572 parameters * 6,144 positions
  plus 12 * 12 layers * 768 * 768 positions * 6,144 positions."""
  assert model_lib.train_flops(Config("t", "v"), 85_709_572, 8) == 3_159_597_662_208 + 521_838_526_464


@pytest.mark.parametrize("rate, width", [(0.1, 128), (0.5, 7), (0.25, 1)])
def test_dropout_drops_at_its_rate_and_keeps_the_mean(rate, width):
  """model.Dropout (two elements per 32-bit draw): the share dropped is the rate within
  5 standard errors, kept elements are scaled by 1/(1-rate), and the mask depends on the
  key alone, so a batch split over 8 devices drops the same elements as on one."""
  x = jnp.ones((64, 33, width), jnp.float32)
  drop = model_lib.Dropout(rate)
  y = np.asarray(drop.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(5)}))
  dropped = np.mean(y == 0)
  assert abs(dropped - rate) < 5 * np.sqrt(rate * (1 - rate) / y.size), dropped
  np.testing.assert_allclose(y[y != 0], 1 / (1 - round(rate * 2 ** 16) / 2 ** 16), rtol=1e-6)
  assert abs(y.mean() - 1) < 5 * np.sqrt(rate / (1 - rate) / y.size)
  if width > 1:  # neighbours share a 32-bit draw but not a decision
    pairs = (y[..., 0:width - 1:2] == 0) & (y[..., 1:width:2] == 0)
    assert abs(pairs.mean() - rate ** 2) < 5 * np.sqrt(rate ** 2 * (1 - rate ** 2) / pairs.size)
  other = drop.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(6)})
  assert np.mean(np.asarray(other) != y) > rate / 2
  np.testing.assert_array_equal(drop.apply({}, x, deterministic=True), x)

  mesh = train.make_mesh()
  rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  sharded = jax.jit(lambda x: drop.apply({}, x, deterministic=False,
                                         rngs={"dropout": jax.random.key(5)}),
                    in_shardings=rows, out_shardings=rows)(jax.device_put(x, rows))
  assert len(sharded.sharding.device_set) == len(jax.devices()) > 1
  np.testing.assert_array_equal(np.asarray(sharded), y)
