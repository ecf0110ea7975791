"""Layers and helpers shared by the model families (ViT, hybrids, BiT, ResNet, CNN, Swin).

Model modules import from here and never from each other, except the hybrid ViT, which builds
its ResNet stem with `models_resnet`. Submodule names that checkpoints depend on are set by the
callers (`MlpBlock.dense_names`, `ResNetStage`'s unit names), so parameter trees are exactly
those of the released files.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Any, Callable, Iterator, Optional, Sequence

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Dtype = Any
Initializer = Callable[..., Array]


def as_dtype(name_or_dtype: Any) -> Any:
  """Lets configs spell dtypes as strings ('bfloat16') so ConfigDicts stay serialisable."""
  return jnp.dtype(name_or_dtype) if isinstance(name_or_dtype, str) else name_or_dtype


def check_images(inputs: Array, what: str) -> None:
  """Raises unless `inputs` is a batch of NHWC images; `what` names the model in the message."""
  if inputs.ndim != 4:
    raise ValueError(f'{what} expects NHWC images, got shape {inputs.shape}')


def check_stage_depths(num_layers: Sequence[int], what: str, allow_empty: bool = False) -> None:
  """Raises unless every ResNet stage has a unit and, unless `allow_empty`, there is a stage."""
  if (not num_layers and not allow_empty) or any(int(n) < 1 for n in num_layers):
    raise ValueError(f'{what} needs {"" if allow_empty else "at least one stage and "}at least '
                     f'one unit per stage, got num_layers={tuple(num_layers)}')


# The platform attention is traced for: None means the default backend. `vit_jax.aot` sets it
# while compiling for a GPU from a machine without one, so the program is the one a GPU runs.
_ATTENTION_PLATFORM: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    'attention_platform', default=None)
# cuDNN flash attention takes tokens padded to this multiple (197 -> 200 for ViT-B/16 at 224):
# an even count keeps it clear of cuDNN's odd-length refusals and tensor-core tiles like it.
CUDNN_TOKEN_MULTIPLE = 8
CUDNN_MAX_HEAD_DIM = 128  # 256 on Hopper and later; 128 holds on every GPU cuDNN fuses for.


@contextlib.contextmanager
def attention_platform(platform: str | None) -> Iterator[None]:
  """Traces `attention_fn` as on `platform` ('gpu', 'tpu', 'cpu'), whatever the backend."""
  token = _ATTENTION_PLATFORM.set(platform)
  try:
    yield
  finally:
    _ATTENTION_PLATFORM.reset(token)


def cudnn_refusal(query: Array, key: Array, bias: Optional[Array], mask: Optional[Array],
                  platform: str) -> str | None:
  """Why cuDNN flash attention cannot take these inputs, or None when it can."""
  if platform != 'gpu':
    return f'no cuDNN on {platform}'
  if query.dtype not in (jnp.bfloat16, jnp.float16):
    return f'cuDNN flash attention needs bfloat16 or float16, not {query.dtype}'
  head_dim = query.shape[-1]
  if head_dim % 8 or head_dim > CUDNN_MAX_HEAD_DIM:
    return f'head dimension {head_dim} is not a multiple of 8 up to {CUDNN_MAX_HEAD_DIM}'
  if bias is not None or mask is not None:
    return 'an attention bias or mask (e.g. relative positions) is not padded for cuDNN'
  if query.shape[1] != key.shape[1]:
    return 'queries and keys of different lengths'
  return None


@functools.lru_cache(maxsize=None)
def _log_fallback(reason: str) -> None:
  logging.info('Attention on GPU uses XLA, not cuDNN flash attention: %s', reason)


def padded_attention(query: Array, key: Array, value: Array, implementation: str | None = None,
                     multiple: int = CUDNN_TOKEN_MULTIPLE) -> Array:
  """Attention over [batch, tokens, heads, head_dim] with tokens padded to `multiple`.

  The padded keys are masked out (`key_value_seq_lengths`) and the padded queries dropped, so
  the result is the unpadded attention's; cuDNN sees a token count it takes.
  """
  tokens = key.shape[1]
  padded = -(-tokens // multiple) * multiple
  if padded != tokens:
    pad = ((0, 0), (0, padded - tokens), (0, 0), (0, 0))
    query, key, value = (jnp.pad(t, pad) for t in (query, key, value))
  lengths = jnp.full((key.shape[0],), tokens, jnp.int32)
  out = jax.nn.dot_product_attention(query, key, value, key_value_seq_lengths=lengths,
                                     implementation=implementation)
  return out[:, :tokens]


def attention_logits(subscripts: str, query: Array, key: Array, float32_logits: bool = False,
                     precision: Any = None) -> Array:
  """The query-key products as float32, for a float32 softmax.

  With `float32_logits` they leave the matrix unit in float32, where they were accumulated;
  otherwise they are rounded to the inputs' dtype first, as flax's and big_vision's attention
  do. In bfloat16 that rounding is the attention's main error (BENCHMARKS.md: 2.5e-2 of the
  largest output against 3.2e-3 for peaked logits), and float32 logits cost memory.
  """
  if float32_logits:
    return jnp.einsum(subscripts, query, key, precision=precision,
                      preferred_element_type=jnp.float32)
  return jnp.einsum(subscripts, query, key, precision=precision).astype(jnp.float32)


def _attention_forward(query: Array, key: Array, value: Array,
                       float32_logits: bool) -> tuple[Array, Array]:
  """(output, probabilities in the inputs' dtype).

  The logits are `attention_logits`; the softmax statistics and exponentials are float32. The
  softmax is written as exp(logits - logsumexp) so that XLA makes the row statistics in one
  reduction and the probabilities in one pass that emits the inputs' dtype, instead of writing
  float32 exponentials out between the two.
  """
  scale = query.shape[-1] ** -0.5
  logits = attention_logits('bqhd,bkhd->bhqk', query, key, float32_logits) * scale
  top = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
  log_sum = top + jnp.log(jnp.sum(jnp.exp(logits - top), axis=-1, keepdims=True))
  probs = jnp.exp(logits - log_sum).astype(value.dtype)
  return jnp.einsum('bhqk,bkhd->bqhd', probs, value), probs


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def xla_attention(query: Array, key: Array, value: Array, float32_logits: bool = False) -> Array:
  """Softmax attention over [batch, tokens, heads, head_dim] for bfloat16 where no kernel is fused.

  XLA's attention where no fused kernel runs (TPUs, GPUs outside cuDNN's constraints). Autodiff
  of `jax.nn.dot_product_attention` keeps every layer's float32 exponentials for the backward
  pass and runs the query/key gradients as float32 dots. Here the backward keeps only the
  probabilities in the inputs' dtype, and computes as FlashAttention's backward does: the
  softmax gradient in float32, its row term from the output (sum of dO * O over head_dim) rather
  than from another pass over the tokens x tokens matrix, and the query/key products in the
  inputs' dtype. (Recomputing the probabilities from the row statistics, as FlashAttention also
  does, made XLA's TPU programs larger: BENCHMARKS.md.) In float32 this is plain softmax
  attention to rounding; in bfloat16 a ViT-B/16 train step keeps and moves less than
  big_vision's on the same TPU. `float32_logits` (see `attention_logits`) cuts the error about
  8x and costs memory: BENCHMARKS.md.
  """
  return _attention_forward(query, key, value, float32_logits)[0]


def _xla_attention_fwd(query: Array, key: Array, value: Array, float32_logits: bool):
  out, probs = _attention_forward(query, key, value, float32_logits)
  return out, (query, key, value, probs, out)


def _xla_attention_bwd(float32_logits, residuals, grad_out):
  del float32_logits  # The backward starts from the kept probabilities.
  query, key, value, probs, out = residuals
  scale = query.shape[-1] ** -0.5
  grad_out = grad_out.astype(value.dtype)
  grad_value = jnp.einsum('bhqk,bqhd->bkhd', probs, grad_out)
  grad_probs = jnp.einsum('bqhd,bkhd->bhqk', grad_out, value, preferred_element_type=jnp.float32)
  # Reduced in the arrays' own layout, then the small [batch, tokens, heads] result transposed.
  row = jnp.sum(grad_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)
  row = jnp.transpose(row, (0, 2, 1))[..., None]
  grad_logits = (probs.astype(jnp.float32) * (grad_probs - row) * scale).astype(query.dtype)
  grad_query = jnp.einsum('bhqk,bkhd->bqhd', grad_logits, key)
  grad_key = jnp.einsum('bhqk,bqhd->bkhd', grad_logits, query)
  return grad_query, grad_key, grad_value


xla_attention.defvjp(_xla_attention_fwd, _xla_attention_bwd)


def _einsum_reason(deterministic: bool, dropout_rate: float, precision: Any,
                   module: Optional[nn.Module], platform: str) -> str | None:
  """Why attention must take the explicit einsum-softmax-einsum path, or None."""
  if module is not None:
    return 'the attention weights are sown (sow_weights=True)'
  if dropout_rate > 0. and not deterministic:
    return f'attention dropout ({dropout_rate}) in training'
  if precision is not None:
    return f'matmul precision {precision} is set'
  if not deterministic and platform == 'cpu':
    return 'training on CPU'
  return None


def einsum_attention(query: Array, key: Array, value: Array, bias: Optional[Array] = None,
                     mask: Optional[Array] = None, broadcast_dropout: bool = True,
                     dropout_rng: Optional[Array] = None, dropout_rate: float = 0.,
                     deterministic: bool = False, precision: Any = None,
                     module: Optional[nn.Module] = None, float32_logits: bool = False) -> Array:
  """flax's attention (weights, dropout, sown weights) with a float32 softmax.

  flax takes the softmax in the inputs' dtype; here it takes `attention_logits` (float32) and
  rounds only the probabilities, as `xla_attention` does.
  """
  return nn.dot_product_attention(
      query, key, value, bias=bias, mask=mask, broadcast_dropout=broadcast_dropout,
      dropout_rng=dropout_rng, dropout_rate=dropout_rate, deterministic=deterministic,
      module=module, qk_attn_weights_einsum=functools.partial(
          attention_logits, float32_logits=float32_logits, precision=precision),
      attn_weights_value_einsum=functools.partial(jnp.einsum, precision=precision))


def attention_fn(query: Array, key: Array, value: Array, bias: Optional[Array] = None,
                 mask: Optional[Array] = None, broadcast_dropout: bool = True,
                 dropout_rng: Optional[Array] = None, dropout_rate: float = 0.,
                 deterministic: bool = False, dtype: Optional[Dtype] = None,
                 precision: Any = None, module: Optional[nn.Module] = None,
                 normalize_qk: Optional[Callable[[Array, Array], tuple[Array, Array]]] = None,
                 float32_logits: bool = False) -> Array:
  """Scaled dot-product attention that uses a fused kernel where one exists.

  flax's `MultiHeadDotProductAttention` hands an `attention_fn` only the keyword arguments its
  signature names, so every one of them is named here and each path honours it: `dtype` (the
  inputs are cast to it), `mask` and `bias`, attention dropout, `precision` and `module` (the
  sown weights). The model binds the last two with `functools.partial` (which keeps the
  signature): `normalize_qk(query, key)` normalizes queries and keys first (ViT's `qk_norm`),
  `float32_logits` keeps the query-key products in float32 (`attention_logits`; cuDNN and
  `jax.nn.dot_product_attention` always do).

  On GPUs, bfloat16/float16 inputs with a head dimension cuDNN takes run cuDNN flash attention
  (`implementation='cudnn'`, tokens padded by `padded_attention`), in training and evaluation.
  Otherwise bfloat16/float16 attention is `xla_attention` (the reason logged once on GPUs), and
  `jax.nn.dot_product_attention` takes the rest: a bias or mask, float32 (where `xla_attention`
  saves nothing, and XLA's TPU compiler kept 2.3x the temporaries of a ViT-B/16 step with it),
  and inference on CPUs (where its forward is about 2.5x faster). None of these has attention
  dropout, a matmul precision or returns the weights, so those cases (training with attention
  dropout, `precision`, and `sow_weights=True` for attention maps) take `einsum_attention`.
  So does training on CPUs, where the explicit einsum-softmax-einsum trains faster
  (BENCHMARKS.md), but only where the caller passes deterministic=False: flax's attention
  passes True whenever its dropout rate is 0. Every path takes the softmax in float32; in
  float32 they agree to rounding.
  """
  if dropout_rate > 0. and not deterministic and dropout_rng is None:
    raise ValueError(f'attention dropout (dropout_rate={dropout_rate}, deterministic=False) '
                     'needs a dropout_rng')
  if dtype is not None:
    query, key, value = (t.astype(dtype) for t in (query, key, value))
  if normalize_qk is not None:
    query, key = normalize_qk(query, key)
  platform = _ATTENTION_PLATFORM.get() or jax.default_backend()
  explicit = _einsum_reason(deterministic, dropout_rate, precision, module, platform)
  reason = explicit or cudnn_refusal(query, key, bias, mask, platform)
  if reason is None:
    return padded_attention(query, key, value, implementation='cudnn')
  if platform == 'gpu':
    _log_fallback(reason)
  if explicit:
    return einsum_attention(query, key, value, bias, mask, broadcast_dropout, dropout_rng,
                            dropout_rate, deterministic, precision, module, float32_logits)
  if (bias is None and mask is None and platform != 'cpu'
      and query.dtype in (jnp.bfloat16, jnp.float16)):
    return xla_attention(query, key, value, float32_logits)
  return jax.nn.dot_product_attention(query, key, value, bias=bias, mask=mask)


class DropPath(nn.Module):
  """Stochastic depth: drops the whole residual branch per example.

  The rate is a call argument so that a scanned encoder can feed each layer its own (traced) rate.
  """

  @nn.compact
  def __call__(self, x: Array, rate: float | Array, deterministic: bool) -> Array:
    if deterministic or (isinstance(rate, (int, float)) and rate == 0.):
      return x
    keep = 1. - rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = jax.random.bernoulli(self.make_rng('dropout'), keep, shape)
    return jnp.where(mask, x / keep, jnp.zeros_like(x))


class MlpBlock(nn.Module):
  """Transformer MLP: Dense → GELU → Dropout → Dense → Dropout.

  The defaults are ViT's (tanh-approximated GELU, `Dense_0`/`Dense_1` as in the original `.npz`
  files); Swin uses exact GELU, truncated-normal kernels, zero biases and timm's `fc1`/`fc2`.
  """
  mlp_dim: int
  dropout_rate: float = 0.
  gelu_approximate: bool = True
  kernel_init: Initializer = nn.initializers.xavier_uniform()
  bias_init: Initializer = nn.initializers.normal(stddev=1e-6)
  dense_names: tuple[str, str] = ('Dense_0', 'Dense_1')
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, deterministic: bool) -> Array:
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype,
                              kernel_init=self.kernel_init, bias_init=self.bias_init)
    hidden_name, out_name = self.dense_names
    out_dim = x.shape[-1]
    x = dense(self.mlp_dim, name=hidden_name)(x)
    x = nn.gelu(x, approximate=self.gelu_approximate)
    x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=deterministic)
    x = dense(out_dim, name=out_name)(x)
    return nn.Dropout(rate=self.dropout_rate)(x, deterministic=deterministic)


class ResNetStage(nn.Module):
  """`num_units` residual units of one width, of which only the first strides.

  Units are named `unit1`, `unit2`, ... or, with `zero_pad_names`, `unit01`, ... (BiT files).
  Extra call arguments (BatchNorm's `train`) go to every unit.
  """
  unit: Any  # The unit's module class.
  num_units: int
  features: int
  first_stride: tuple[int, int]
  unit_kwargs: Any = None
  zero_pad_names: bool = False

  @nn.compact
  def __call__(self, x: Array, *args: Any) -> Array:
    kwargs = dict(self.unit_kwargs or {})
    for u in range(1, self.num_units + 1):
      name = f'unit{u:02d}' if self.zero_pad_names else f'unit{u}'
      strides = self.first_stride if u == 1 else (1, 1)
      x = self.unit(self.features, strides, name=name, **kwargs)(x, *args)
    return x
