"""The models in Flax Linen: the conv stem and the token embedding, a pre-LayerNorm
BERT encoder, the masked-convolution head and the token MLM head
(original-behaviour.md section 7).

Array suffixes: B batch, N nucleotides, L positions (CLS included), L1 positions
without CLS, D d_model, K n_kernels, H heads, E head width, F d_ff.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from nlm_jax.config import Config, UserError

# One-hot rows of the nucleotide codes of fasta.py: A C G T, N (also a masked
# nucleotide) = 1/4 each, PAD = 0.
ONE_HOT = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1],
                    [.25, .25, .25, .25], [0, 0, 0, 0]], dtype=np.float32)
PAD_CODE = 5
CLS_ID, SEP_ID, PAD_ID = 1, 2, 3  # token ids of encodings.py; the model imports no data code

# Initialisers of lncRNA-Py (original 7.4): Glorot-uniform matrices inside the base,
# PyTorch's default uniform(+-1/sqrt(fan_in)) for biases and for the head.
xavier = nn.initializers.xavier_uniform()


def uniform(bound: float) -> nn.initializers.Initializer:
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def torch_dense(features: int, fan_in: int, dtype: jnp.dtype, name: str | None = None,
                glorot: bool = True) -> nn.Dense:
  """A dense layer with float32 parameters computing in `dtype`."""
  bound = 1 / math.sqrt(fan_in)
  return nn.Dense(features, kernel_init=xavier if glorot else uniform(bound),
                  bias_init=uniform(bound), dtype=dtype, param_dtype=jnp.float32, name=name)


class Dropout(nn.Module):
  """flax's nn.Dropout (same fields, the "dropout" rng) on half the random bits: an element
  is dropped where a 16-bit draw is below round(rate * 2^16), so each 32-bit draw decides
  two elements (the rate is exact to 1/2^17: 0.1 drops 0.1000061). Each of JAX's 32-bit
  draws costs a full threefry hash; on 2 CPU cores flax's draws took 8 of the 45 ms of the
  README's e2e train step."""
  rate: float
  deterministic: bool | None = None

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool | None = None) -> jax.Array:
    deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
    threshold = round(self.rate * 2 ** 16)
    if deterministic or threshold == 0:
      return x
    *lead, width = x.shape
    bits = jax.random.bits(self.make_rng("dropout"), (*lead, -(-width // 2)), jnp.uint32)
    draws = jax.lax.bitcast_convert_type(bits, jnp.uint16).reshape(*lead, -1)[..., :width]
    keep = draws >= threshold
    return jnp.where(keep, x / (1 - threshold / 2 ** 16), 0).astype(x.dtype)


def compute_dtype(cfg: Config) -> jnp.dtype:
  return jnp.bfloat16 if cfg.precision == "bf16" else jnp.float32


def segment_mask(segments_BxL: jax.Array, keys_BxL: jax.Array | None = None) -> jax.Array:
  """(B, 1, L, L): query q may attend key k where both belong to the same sequence of a
  packed row (segment ids > 0; padding, 0, attends nothing and is attended by nothing)
  and k is a key (keys_BxL; None: every position of a sequence)."""
  same_BxLxL = segments_BxL[:, :, None] == segments_BxL[:, None, :]
  key_BxL = segments_BxL > 0 if keys_BxL is None else (segments_BxL > 0) & keys_BxL
  return (same_BxLxL & key_BxL[:, None, :])[:, None]


def attention(q_BxLxHxE: jax.Array, k_BxLxHxE: jax.Array, v_BxLxHxE: jax.Array,
              lengths_B: jax.Array | None, implementation: str,
              segments_BxL: jax.Array | None = None,
              keys_BxL: jax.Array | None = None) -> jax.Array:
  """Softmax attention over the first lengths_B keys of each row (padding is at the end),
  or, for packed rows (segments_BxL), over the keys (keys_BxL) of the query's own sequence.

  "reference" is the plain formula; "xla" is jax.nn.dot_product_attention's XLA path (it
  materialises the B x H x L x L logits); "cudnn" is cuDNN's fused kernel (flash
  attention: memory linear in L; packed rows pass it the mask), falling back to XLA with
  one log line where it does not apply (no GPU, float32, head width); "auto" is "cudnn"
  on GPUs, XLA elsewhere. Logits and softmax are float32 in every path.
  """
  mask = None if segments_BxL is None else segment_mask(segments_BxL, keys_BxL)
  if implementation == "reference":
    scale = 1 / math.sqrt(q_BxLxHxE.shape[-1])
    logits_BxHxLxL = jnp.einsum("bqhe,bkhe->bhqk", q_BxLxHxE, k_BxLxHxE,
                                preferred_element_type=jnp.float32) * scale
    if mask is None:
      mask = (jnp.arange(k_BxLxHxE.shape[1])[None, :] < lengths_B[:, None])[:, None, None, :]
    logits_BxHxLxL = jnp.where(mask, logits_BxHxLxL, -1e9)
    probs = jax.nn.softmax(logits_BxHxLxL, axis=-1).astype(v_BxLxHxE.dtype)
    return jnp.einsum("bhqk,bkhe->bqhe", probs, v_BxLxHxE)
  keys = dict(mask=mask) if mask is not None else dict(key_value_seq_lengths=lengths_B.astype(jnp.int32))
  if implementation in ("auto", "cudnn"):
    reason = _cudnn_refusal(q_BxLxHxE, implementation)
    if reason is None:
      try:  # cuDNN's own checks run while tracing: a refusal here is clean
        return jax.nn.dot_product_attention(q_BxLxHxE, k_BxLxHxE, v_BxLxHxE, **keys,
                                            implementation="cudnn")
      except (NotImplementedError, ValueError, RuntimeError) as e:
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
    if reason:
      _log_fallback(reason)
  return jax.nn.dot_product_attention(q_BxLxHxE, k_BxLxHxE, v_BxLxHxE, **keys,
                                      implementation="xla")


_FALLBACKS_LOGGED: set[str] = set()


def _cudnn_refusal(q_BxLxHxE: jax.Array, implementation: str) -> str | None:
  """Why cuDNN's fused attention cannot run here ("" for a silent XLA under "auto" off
  GPUs), or None when it can be tried."""
  if jax.default_backend() != "gpu":
    return "" if implementation == "auto" else f"no GPU (backend {jax.default_backend()})"
  if q_BxLxHxE.dtype not in (jnp.bfloat16, jnp.float16):
    return f"it needs bf16 or fp16, the model computes in {q_BxLxHxE.dtype} (--precision bf16)"
  return None  # head width and lengths: cuDNN's checks, while tracing


def _log_fallback(reason: str) -> None:
  if reason not in _FALLBACKS_LOGGED:
    _FALLBACKS_LOGGED.add(reason)
    logging.warning("cuDNN fused attention does not apply (%s): using XLA's attention", reason)


def sinusoidal(length: int, d: int) -> np.ndarray:
  """PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(p / 10000^(2i/d))."""
  pos = np.arange(length, dtype=np.float64)[:, None]
  freq = np.exp(-math.log(10000.0) * np.arange(0, d, 2) / d)
  pe = np.zeros((length, d), dtype=np.float64)
  pe[:, 0::2] = np.sin(pos * freq)
  pe[:, 1::2] = np.cos(pos * freq)[:, :d // 2]
  return pe.astype(np.float32)


@flax.struct.dataclass
class Packed:
  """What packed rows add to the inputs (sampler.TrainSampler with cfg.packing), per
  position (B, L): the sequence it belongs to (1, 2, ...; 0 for padding) and its place in
  that sequence (0 at the sequence's CLS); and, once the stem has seen the inputs, the
  positions that are keys of attention (None: all of a sequence's)."""
  segments: jax.Array
  positions: jax.Array
  keys: jax.Array | None = None

  @classmethod
  def of(cls, batch: dict[str, jax.Array]) -> "Packed | None":
    return cls(batch["segments"], batch["positions"]) if "segments" in batch else None


class EncoderBlock(nn.Module):
  """One pre-LN block. The residual stream stays float32 (as under the original's
  autocast); LayerNorm statistics are float32 too, its output and the matmuls are in the
  compute dtype. Returns (x, None): the carry and output of nn.scan."""
  cfg: Config
  train: bool = False

  @nn.compact
  def __call__(self, x_BxLxD: jax.Array, lengths_B: jax.Array | None,
               segments_BxL: jax.Array | None = None,
               keys_BxL: jax.Array | None = None) -> tuple[jax.Array, None]:
    cfg = self.cfg
    d, h, dtype = cfg.d_model, cfg.n_heads, compute_dtype(cfg)
    drop = Dropout(cfg.encoder_dropout, deterministic=not self.train)
    y = nn.LayerNorm(epsilon=1e-5, dtype=dtype)(x_BxLxD)
    q, k, v = (torch_dense(d, d, dtype, name=n)(y).reshape(*y.shape[:2], h, d // h)
               for n in "qkv")
    # The padding mask concerns keys only. No dropout on attention probabilities (the
    # original has 0.1 there): fused attention kernels have none.
    y_BxLxHxE = attention(q, k, v, lengths_B, cfg.attention, segments_BxL, keys_BxL)
    y = torch_dense(d, d, dtype, name="o")(y_BxLxHxE.reshape(y.shape))
    x_BxLxD = x_BxLxD + drop(y).astype(jnp.float32)
    y = nn.LayerNorm(epsilon=1e-5, dtype=dtype)(x_BxLxD)
    y_BxLxF = nn.relu(torch_dense(cfg.ff_dim, d, dtype, name="ff_in")(y))
    y = torch_dense(d, cfg.ff_dim, dtype, name="ff_out")(drop(y_BxLxF))
    return x_BxLxD + drop(y).astype(jnp.float32), None


# --remat: what the backward pass keeps of each block. "block" keeps only the block's
# input (the scan carry) and recomputes the rest; "dots" also keeps the outputs of the
# dense layers (matmuls without batch dimensions), recomputing attention, LayerNorm,
# ReLU and dropout.
REMAT_POLICIES = {"block": jax.checkpoint_policies.nothing_saveable,
                  "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


class Encoder(nn.Module):
  """sqrt(d)-scaled inputs + sinusoidal positions -> N pre-LN blocks -> LayerNorm.

  The blocks run under nn.scan: one compiled block, parameters stacked on a leading
  layer axis (params["encoder"]["blocks"]), so compile time does not grow with N.
  """
  cfg: Config

  @nn.compact
  def __call__(self, x_BxLxD: jax.Array, lengths_B: jax.Array | None, train: bool,
               packed: Packed | None = None) -> jax.Array:
    """lengths_B: positions (CLS included) that keys may come from; padding follows. A
    packed row's positions restart at each of its sequences, and attention stays within
    one (`packed`, lengths_B unused)."""
    cfg = self.cfg
    pe = sinusoidal(x_BxLxD.shape[1], cfg.d_model)
    pe_LxD = pe if packed is None else jnp.asarray(pe)[packed.positions]  # (B, L, D) then
    x_BxLxD = (x_BxLxD.astype(jnp.float32) * math.sqrt(cfg.d_model) + pe_LxD)
    x_BxLxD = Dropout(cfg.encoder_dropout, deterministic=not train)(x_BxLxD)
    block = EncoderBlock
    if cfg.remat != "none":
      block = nn.remat(block, policy=REMAT_POLICIES[cfg.remat], prevent_cse=False)
    blocks = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                     in_axes=(nn.broadcast, nn.broadcast, nn.broadcast), length=cfg.N)
    segments_BxL, keys_BxL = (None, None) if packed is None else (packed.segments, packed.keys)
    x_BxLxD, _ = blocks(cfg, train, name="blocks")(x_BxLxD, lengths_B, segments_BxL, keys_BxL)
    return nn.LayerNorm(epsilon=1e-5, dtype=compute_dtype(cfg), name="final_norm")(x_BxLxD)


def _map_encoders(tree: Any, fn: Callable[[dict], dict]) -> Any:
  """`tree` with fn applied to every {"encoder": ...} parameter tree in it: the params, or
  the copies of them inside an optimizer state (Adam's moments)."""
  if isinstance(tree, dict):
    out = {k: _map_encoders(v, fn) for k, v in tree.items()}
    if isinstance(out.get("encoder"), dict):
      out["encoder"] = fn(out["encoder"])
    return out
  if isinstance(tree, tuple) and hasattr(tree, "_fields"):  # optax states are namedtuples
    return type(tree)(*(_map_encoders(x, fn) for x in tree))
  if isinstance(tree, (tuple, list)):
    return type(tree)(_map_encoders(x, fn) for x in tree)
  return tree


def _layer(x: Any, i: int) -> Any:
  if isinstance(x, jax.ShapeDtypeStruct):
    return jax.ShapeDtypeStruct(x.shape[1:], x.dtype, sharding=x.sharding)
  return x[i]


def unstack_blocks(tree: Any) -> Any:
  """The per-layer layout (encoder/block_0 ... block_{N-1}: lncRNA-Py's, and nlm_jax's
  before scanned layers) of a tree in the stacked one (encoder/blocks, layer axis first).
  Works on arrays and on ShapeDtypeStructs (restore targets)."""
  def fn(encoder):
    if "blocks" not in encoder:
      return encoder
    rest = {k: v for k, v in encoder.items() if k != "blocks"}
    n = jax.tree.leaves(encoder["blocks"])[0].shape[0]
    return {**{f"block_{i}": jax.tree.map(lambda x: _layer(x, i), encoder["blocks"])
               for i in range(n)}, **rest}
  return _map_encoders(tree, fn)


def stack_blocks(tree: Any) -> Any:
  """The stacked layout of a tree in the per-layer one (the inverse of unstack_blocks)."""
  def fn(encoder):
    names = sorted((k for k in encoder if k.startswith("block_")), key=lambda k: int(k[6:]))
    if not names:
      return encoder
    rest = {k: v for k, v in encoder.items() if not k.startswith("block_")}
    stack = lambda *xs: jnp.stack(xs) if isinstance(xs[0], jax.Array) else np.stack(xs)
    return {"blocks": jax.tree.map(stack, *(encoder[k] for k in names)), **rest}
  return _map_encoders(tree, fn)


class ConvStem(nn.Module):
  """Stride = kernel = kernel_size convolution over one-hot nucleotides, a learned
  CLS vector in front. Returns the embeddings and the attended length of each row."""
  cfg: Config

  @nn.compact
  def __call__(self, codes_BxN: jax.Array, packed: Packed | None = None
               ) -> tuple[jax.Array, jax.Array]:
    """A packed row's later sequences each start at a window slot of padding: the CLS
    vector takes its place (positions 0)."""
    cfg = self.cfg
    ks, nk, d, dtype = cfg.kernel_size, cfg.n_kernels, cfg.d_model, compute_dtype(cfg)
    b, n = codes_BxN.shape
    n_pos = n // ks
    x_BxNx4 = jnp.asarray(ONE_HOT, dtype)[codes_BxN[:, :n_pos * ks]]
    # Each window of ks nucleotides x 4 channels is one input vector of the conv.
    x = x_BxNx4.reshape(b, n_pos, ks * 4)
    conv_bound = math.sqrt(6 / (4 * ks + nk * ks))  # Glorot with PyTorch's conv fans
    x_BxL1xK = nn.Dense(nk, kernel_init=uniform(conv_bound), bias_init=uniform(1 / math.sqrt(4 * ks)),
                        dtype=dtype, param_dtype=jnp.float32, name="conv")(x)
    if not cfg.no_input_relu:
      x_BxL1xK = nn.relu(x_BxL1xK)
    x_BxL1xD = x_BxL1xK
    if cfg.use_input_linear:
      x_BxL1xD = torch_dense(d, nk, dtype, name="input_linear")(x_BxL1xK)
    cls = self.param("cls", uniform(math.sqrt(3 / d)), (1, 1, d)).astype(dtype)
    x_BxLxD = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, d)), x_BxL1xD], axis=1)
    if packed is not None:
      x_BxLxD = jnp.where((packed.positions == 0)[..., None], cls, x_BxLxD)
    return x_BxLxD, 1 + jnp.minimum(key_windows(codes_BxN, cfg), n_pos)

  def keys(self, codes_BxN: jax.Array, packed: Packed) -> Packed:
    """`packed` with the keys of its rows: each sequence's CLS and its windows (whole
    ones only, unless cfg.attend_partial_window), as key_windows for one sequence a row."""
    ks = self.cfg.kernel_size
    n_pos = codes_BxN.shape[1] // ks
    real_BxL1xK = (codes_BxN[:, :n_pos * ks] != PAD_CODE).reshape(-1, n_pos, ks)
    window_BxL1 = real_BxL1xK.any(-1) if self.cfg.attend_partial_window else real_BxL1xK.all(-1)
    window_BxL = jnp.pad(window_BxL1, ((0, 0), (1, 0)))
    return packed.replace(keys=window_BxL | (packed.positions == 0))


def key_windows(codes_BxN: jax.Array, cfg: Config) -> jax.Array:
  """(B,) windows of each row that attention sees besides CLS: lncRNA-Py's rule,
  int(count_nonzero(nucleotides) / kernel_size) (CSEBERT.forward), so a last window that
  holds fewer than kernel_size nucleotides is no key (and a sequence shorter than a
  kernel sees only CLS); with cfg.attend_partial_window (nlm_jax before 2026-12) it is.
  N and masked nucleotides count, padding does not."""
  n_real_B = jnp.sum(codes_BxN != PAD_CODE, axis=1)
  ks = cfg.kernel_size
  return -(-n_real_B // ks) if cfg.attend_partial_window else n_real_B // ks


class ConvHead(nn.Module):
  """Masked-convolution head: drop CLS, dropout, optional linear to n_kernels,
  optional ReLU, then the kernel_size-stride transposed conv to 4 logits per
  nucleotide (written as a dense layer; its bias is shared by the ks positions)."""
  cfg: Config

  @nn.compact
  def __call__(self, y_BxLxD: jax.Array, train: bool) -> jax.Array:
    cfg = self.cfg
    ks, dtype = cfg.kernel_size, compute_dtype(cfg)
    y = Dropout(cfg.dropout, deterministic=not train)(y_BxLxD[:, 1:])
    if not cfg.no_output_linear:
      y = torch_dense(cfg.n_kernels, cfg.d_model, dtype, name="output_linear", glorot=False)(y)
    if cfg.output_relu:
      y = nn.relu(y)
    # Input width: n_kernels after the output linear, d_model without it (lncRNA-Py
    # swaps the two, which only works when they are equal).
    bound = 1 / math.sqrt(4 * ks)
    y = nn.Dense(ks * 4, use_bias=False, kernel_init=uniform(bound), dtype=dtype,
                 param_dtype=jnp.float32, name="deconv")(y)
    bias = self.param("deconv_bias", uniform(bound), (4,))
    b, l1 = y.shape[:2]
    return y.reshape(b, l1 * ks, 4) + bias


class ConvBERT(nn.Module):
  """Nucleotide codes (B, N) -> logits (B, N', 4), N' = (N // ks) * ks."""
  cfg: Config

  def setup(self):
    self.stem = ConvStem(self.cfg)
    self.encoder = Encoder(self.cfg)
    self.head = ConvHead(self.cfg)

  def embed(self, codes_BxN: jax.Array, train: bool = False, packed: Packed | None = None
            ) -> tuple[jax.Array, jax.Array]:
    """Encoder output (B, L, D) and the attended length of each row (B,)."""
    x_BxLxD, lengths_B = self.stem(codes_BxN, packed)
    if packed is not None:
      packed = self.stem.keys(codes_BxN, packed)
    return self.encoder(x_BxLxD, lengths_B, train, packed), lengths_B

  def __call__(self, codes_BxN: jax.Array, train: bool = False,
               packed: Packed | None = None) -> jax.Array:
    y_BxLxD, _ = self.embed(codes_BxN, train, packed)
    return self.head(y_BxLxD, train)


class TokenBERT(nn.Module):
  """Token ids (B, L) -> logits (B, L, V): embedding, encoder, one linear MLM layer."""
  cfg: Config

  def setup(self):
    cfg = self.cfg
    dtype = compute_dtype(cfg)
    self.embedding = nn.Embed(cfg.vocab_size, cfg.d_model, embedding_init=xavier, dtype=dtype,
                              param_dtype=jnp.float32)
    self.encoder = Encoder(cfg)
    self.head_dropout = Dropout(cfg.dropout)
    self.mlm = torch_dense(cfg.vocab_size, cfg.d_model, dtype, glorot=False)

  def embed(self, ids_BxL: jax.Array, train: bool = False, packed: Packed | None = None
            ) -> tuple[jax.Array, jax.Array]:
    """Encoder output (B, L, D) and the attended length of each row (B,): the tokens
    before the first PAD (tokenizers put padding at the end only)."""
    lengths_B = jnp.sum(ids_BxL != PAD_ID, axis=1)
    return self.encoder(self.embedding(ids_BxL), lengths_B, train, packed), lengths_B

  def __call__(self, ids_BxL: jax.Array, train: bool = False,
               packed: Packed | None = None) -> jax.Array:
    y_BxLxD, _ = self.embed(ids_BxL, train, packed)
    y_BxLxD = self.head_dropout(y_BxLxD, deterministic=not train)
    return self.mlm(y_BxLxD)


def real_positions(inputs: jax.Array, lengths_B: jax.Array, n_positions: int,
                   is_token: bool) -> jax.Array:
  """(B, L) True at the encoder positions that stand for nucleotides: for conv the
  windows that attention sees (key_windows: as lncRNA-Py's mean pooling), for tokens the
  sequence's tokens; never CLS, SEP or padding."""
  if is_token:
    return (inputs != PAD_ID) & (inputs != CLS_ID) & (inputs != SEP_ID)
  pos_1xL = jnp.arange(n_positions)[None]
  return (pos_1xL >= 1) & (pos_1xL < lengths_B[:, None])


class Classifier(nn.Module):
  """lncRNA-Py's Classifier: the base network (the conv stem or the token embedding, and
  the encoder, with the parameter names of ConvBERT / TokenBERT, so pre-trained weights
  drop in), the CLS output or the mean over the real positions, dropout, ReLU layers of
  `hidden_cls_layers` nodes, and one output logit (B,): pcRNA is the positive class."""
  cfg: Config

  def setup(self):
    cfg = self.cfg
    dtype = compute_dtype(cfg)
    if cfg.is_token:
      self.embedding = nn.Embed(cfg.vocab_size, cfg.d_model, embedding_init=xavier, dtype=dtype,
                                param_dtype=jnp.float32)
    else:
      self.stem = ConvStem(cfg)
    self.encoder = Encoder(cfg)
    self.head_dropout = Dropout(cfg.dropout)
    widths = (cfg.d_model, *cfg.hidden_cls_layers)
    # PyTorch's default Linear initialisation, as lncRNA-Py's head.
    self.hidden = [torch_dense(n, fan_in, dtype, glorot=False)
                   for n, fan_in in zip(cfg.hidden_cls_layers, widths)]
    self.output = torch_dense(1, widths[-1], dtype, glorot=False)

  def embed(self, inputs: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    """Encoder output (B, L, D) and the attended length of each row (B,), as ConvBERT's and
    TokenBERT's `embed`."""
    if self.cfg.is_token:
      lengths_B = jnp.sum(inputs != PAD_ID, axis=1)
      return self.encoder(self.embedding(inputs), lengths_B, train), lengths_B
    x_BxLxD, lengths_B = self.stem(inputs)
    return self.encoder(x_BxLxD, lengths_B, train), lengths_B

  def __call__(self, inputs: jax.Array, train: bool = False,
               packed: Packed | None = None) -> jax.Array:
    del packed  # classification rows hold one sequence each (Config.validate)
    y_BxLxD, lengths_B = self.embed(inputs, train)
    return self.head(y_BxLxD, inputs, lengths_B, train)

  def head(self, y_BxLxD: jax.Array, inputs: jax.Array, lengths_B: jax.Array,
           train: bool = False) -> jax.Array:
    """The logit (B,) from the encoder output: pooling, dropout, hidden layers, output."""
    y_BxLxD = y_BxLxD.astype(jnp.float32)
    if self.cfg.freeze_network:  # the base is fixed: no gradient to compute through it
      y_BxLxD = jax.lax.stop_gradient(y_BxLxD)
    if self.cfg.pooling == "cls":
      x_BxD = y_BxLxD[:, 0]
    else:
      real_BxL = real_positions(inputs, lengths_B, y_BxLxD.shape[1], self.cfg.is_token)
      count_B = jnp.maximum(jnp.sum(real_BxL, axis=1), 1)
      x_BxD = jnp.sum(jnp.where(real_BxL[..., None], y_BxLxD, 0.0), axis=1) / count_B[:, None]
    x_BxD = self.head_dropout(x_BxD, deterministic=not train)
    for layer in self.hidden:
      x_BxD = nn.relu(layer(x_BxD))
    return self.output(x_BxD)[:, 0].astype(jnp.float32)


def dummy_inputs(cfg: Config) -> jax.Array:
  """One row of model input: nucleotide codes for conv, token ids otherwise."""
  if cfg.is_token:
    return jnp.zeros((1, cfg.context_length), jnp.int32)
  return jnp.zeros((1, cfg.n_nucleotides), jnp.uint8)


def abstract_params(cfg: Config) -> Any:
  """The parameter tree as ShapeDtypeStructs, without allocating it (what a checkpoint
  is restored into)."""
  model = build(cfg)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), dummy_inputs(cfg))["params"])


def build(cfg: Config) -> nn.Module:
  if cfg.is_classifier:
    return Classifier(cfg)
  return TokenBERT(cfg) if cfg.is_token else ConvBERT(cfg)


def bce_loss(logits_B: jax.Array, labels_B: jax.Array, pos_weight: float | jax.Array = 1.0
             ) -> dict[str, jax.Array]:
  """Sums over the labelled rows (label 0 or 1; -1 fills a batch), in float32: the loss
  of PyTorch's BCEWithLogitsLoss(pos_weight) (its mean is loss_sum / count), and the
  confusion counts of the prediction P(pcRNA) >= 0.5, pcRNA (label 1) positive."""
  labels_B = labels_B.astype(jnp.int32)
  weight_B = (labels_B >= 0).astype(jnp.float32)
  y_B = (labels_B == 1).astype(jnp.float32)
  x_B = logits_B.astype(jnp.float32)
  loss_B = -(pos_weight * y_B * jax.nn.log_sigmoid(x_B) + (1 - y_B) * jax.nn.log_sigmoid(-x_B))
  pred_B = (x_B >= 0).astype(jnp.float32)
  return {"loss_sum": jnp.sum(loss_B * weight_B), "count": jnp.sum(weight_B),
          "tp": jnp.sum(pred_B * y_B * weight_B), "fp": jnp.sum(pred_B * (1 - y_B) * weight_B),
          "fn": jnp.sum((1 - pred_B) * y_B * weight_B),
          "tn": jnp.sum((1 - pred_B) * (1 - y_B) * weight_B)}


def mlm_loss(logits_BxNxV: jax.Array, targets_BxN: jax.Array, label_smoothing: float = 0.0,
             token_nucs_VxM: jax.Array | None = None) -> dict[str, jax.Array]:
  """Sums over the selected positions (target >= 0), in float32; the caller takes means.

  loss_sum: plain cross-entropy (what is logged, comparable across encodings);
  train_sum: the cross-entropy with label smoothing (PyTorch's: the smoothing mass is
  spread over all classes), what token models train on; correct/count: token accuracy;
  nuc_correct/nuc_count: per-nucleotide accuracy, the nucleotides of the predicted token
  that equal the true token's at the same position (token_nucs_VxM: each token's
  nucleotide codes, -1 past its end). Without a table a position is one nucleotide.
  """
  n = logits_BxNxV.shape[1]
  targets_BxN = targets_BxN[:, :n].astype(jnp.int32)
  weight_BxN = (targets_BxN >= 0).astype(jnp.float32)
  safe_BxN = jnp.maximum(targets_BxN, 0)
  logp = jax.nn.log_softmax(logits_BxNxV.astype(jnp.float32))
  ce_BxN = -jnp.take_along_axis(logp, safe_BxN[..., None], axis=-1)[..., 0]
  smoothed_BxN = (1 - label_smoothing) * ce_BxN - label_smoothing * jnp.mean(logp, axis=-1)
  pred_BxN = jnp.argmax(logp, axis=-1)
  correct = jnp.sum((pred_BxN == targets_BxN) * weight_BxN)
  count = jnp.sum(weight_BxN)
  sums = {"loss_sum": jnp.sum(ce_BxN * weight_BxN), "train_sum": jnp.sum(smoothed_BxN * weight_BxN),
          "correct": correct, "count": count, "nuc_correct": correct, "nuc_count": count}
  if token_nucs_VxM is not None:
    token_nucs_VxM = jnp.asarray(token_nucs_VxM)
    true_BxNxM = token_nucs_VxM[safe_BxN]
    real_BxNxM = (true_BxNxM >= 0) * weight_BxN[..., None]
    sums["nuc_correct"] = jnp.sum((token_nucs_VxM[pred_BxN] == true_BxNxM) * real_BxNxM)
    sums["nuc_count"] = jnp.sum(real_BxNxM)
  return sums


def train_flops(cfg: Config, n_params: int, rows: int) -> float:
  """FLOPs of one train step on `rows` rows as PaLM counts them for MFU: 6 per parameter and
  position (forward and backward) plus 12 * N * d_model * context per position (attention);
  recomputation under --remat is not counted. (XLA's cost analysis counts the scanned
  encoder's loop body once.)"""
  positions = rows * cfg.context_length
  return 6.0 * n_params * positions + 12.0 * cfg.N * cfg.d_model * cfg.context_length * positions


def activation_bytes(cfg: Config, rows: int, train: bool) -> int:
  """A lower bound of the memory one step's activations take on a device that holds `rows`
  rows: the widest of one layer's tensors (model width, feed-forward, attention scores),
  in float32, once per layer when training keeps them for the backward pass. Sizes above
  a device's memory are refused before XLA tries them (on a CPU it aborted the process).
  With --remat the backward pass keeps only each block's input, and one block's tensors
  at a time."""
  width = max(cfg.d_model, cfg.ff_dim, cfg.n_heads * cfg.context_length)
  if train and cfg.remat != "none":
    return 4 * rows * cfg.context_length * (width + cfg.d_model * cfg.N)
  return 4 * rows * cfg.context_length * width * (cfg.N if train else 1)


def device_memory(device: jax.Device) -> int:
  """Bytes a device may hold: its allocator's limit, or the host's memory for a CPU."""
  stats = device.memory_stats() or {}
  if "bytes_limit" in stats:
    return int(stats["bytes_limit"])
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits(cfg: Config, rows: int, device: jax.Device, train: bool, flags: str) -> None:
  """Raises UserError when one step cannot fit in `device`'s memory, naming `flags`."""
  need, have = activation_bytes(cfg, rows, train), device_memory(device)
  if need > have:
    raise UserError(f"{rows:,} rows of {cfg.context_length} positions per device need at least "
                    f"{need / 2**30:,.1f} GiB for one step, more than the {have / 2**30:,.1f} GiB "
                    f"of {device.platform} memory: lower {flags}.")
