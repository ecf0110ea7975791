"""Vision Transformer (and the hybrid ResNet+ViT) as Flax linen modules.

Submodule names follow the released `.npz` checkpoints of the original library, which were written
with pre-linen numbering (`LayerNorm_0`, `MultiHeadDotProductAttention_1`, `LayerNorm_2`,
`MlpBlock_3`), so that a checkpoint's flat keys are exactly our parameter paths. The layers
shared with the other families (MLP block, drop path, attention function) are in `layers`.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.models import layers
from vit_jax.models import outputs
from vit_jax.models.bit import model as bit_model

Array = jax.Array
Dtype = Any


# (feature map, patch) pairs whose dropped remainder has been logged, to say it once.
_REMAINDERS_LOGGED: set[tuple[tuple[int, int], tuple[int, int]]] = set()


class LayerScale(nn.Module):
  """Per-channel scale of a residual branch (CaiT; timm's `ls1`/`ls2` `gamma`)."""
  init_values: float
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = self.param('scale', nn.initializers.constant(self.init_values), (x.shape[-1],),
                       self.param_dtype)
    return x * scale.astype(x.dtype)


class QKNorm(nn.Module):
  """LayerNorms queries and keys per head before attention (timm's `qk_norm`).

  flax's own `normalize_qk` drops the LayerNorm bias, which timm's `q_norm`/`k_norm` have. Made
  in the block and bound into `layers.attention_fn` as its `normalize_qk`, the norms' parameters
  live under the block's `qk_norm/{query_norm,key_norm}`; flax still sees `attention_fn`'s
  signature, so attention dropout, the mask and the dtype reach it.
  """
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, query: Array, key: Array) -> tuple[Array, Array]:
    norm = functools.partial(nn.LayerNorm, epsilon=1e-6, dtype=query.dtype,
                             param_dtype=self.param_dtype)
    return norm(name='query_norm')(query), norm(name='key_norm')(key)


class Encoder1DBlock(nn.Module):
  """Pre-LN transformer block: x + Attn(LN(x)), then x + MLP(LN(x)).

  `init_values` adds LayerScale to both branches, `qk_norm` per-head query/key LayerNorms;
  `float32_logits` keeps bfloat16 attention's logits in float32 (`layers.attention_logits`).
  """
  mlp_dim: int
  num_heads: int
  dropout_rate: float = 0.
  attention_dropout_rate: float = 0.
  stochastic_depth: float = 0.
  gelu_approximate: bool = True
  init_values: Optional[float] = None
  qk_norm: bool = False
  float32_logits: bool = False
  sow_weights: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, deterministic: bool, rate: float | Array | None = None) -> Array:
    rate = self.stochastic_depth if rate is None else rate
    norm = functools.partial(nn.LayerNorm, epsilon=1e-6, dtype=self.dtype,
                             param_dtype=self.param_dtype)
    y = norm(name='LayerNorm_0')(x)
    attend = functools.partial(layers.attention_fn, float32_logits=self.float32_logits)
    if self.qk_norm:
      attend = functools.partial(attend, normalize_qk=QKNorm(param_dtype=self.param_dtype,
                                                             name='qk_norm'))
    y = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=nn.initializers.xavier_uniform(), broadcast_dropout=False,
        dropout_rate=self.attention_dropout_rate,
        attention_fn=attend,
        name='MultiHeadDotProductAttention_1')(
            y, y, deterministic=deterministic, sow_weights=self.sow_weights)
    y = nn.Dropout(rate=self.dropout_rate)(y, deterministic=deterministic)
    if self.init_values is not None:
      y = LayerScale(self.init_values, param_dtype=self.param_dtype, name='ls1')(y)
    x = x + layers.DropPath()(y, rate, deterministic)

    y = norm(name='LayerNorm_2')(x)
    y = layers.MlpBlock(mlp_dim=self.mlp_dim, dropout_rate=self.dropout_rate,
                        gelu_approximate=self.gelu_approximate, dtype=self.dtype,
                        param_dtype=self.param_dtype, name='MlpBlock_3')(
                            y, deterministic=deterministic)
    if self.init_values is not None:
      y = LayerScale(self.init_values, param_dtype=self.param_dtype, name='ls2')(y)
    x = x + layers.DropPath()(y, rate, deterministic)
    # Names the activation axes for sharding rules (training.sharding.activation_rules); a no-op
    # when no rules are active.
    return nn.with_logical_constraint(x, ('batch', 'length', 'embed'))


class _ScannedBlock(Encoder1DBlock):
  """Encoder1DBlock in the (carry, xs) form that `nn.scan` wants; xs is the drop-path rate."""

  @nn.compact
  def __call__(self, x: Array, rate: Array, deterministic: bool) -> tuple[Array, None]:
    return super().__call__(x, deterministic, rate), None


class Encoder(nn.Module):
  """The transformer encoder: position embedding, `num_layers` blocks, final LayerNorm.

  With `scan=True` the blocks are one `nn.scan` over stacked parameters (`encoderblock/...` with a
  leading layer axis; `checkpoint` converts to and from the per-layer layout), which compiles in
  constant time in depth. `remat=True` recomputes each block's activations in the backward pass.
  """
  num_layers: int
  mlp_dim: int
  num_heads: int
  dropout_rate: float = 0.
  attention_dropout_rate: float = 0.
  stochastic_depth: float = 0.
  gelu_approximate: bool = True
  init_values: Optional[float] = None
  qk_norm: bool = False
  float32_logits: bool = False
  posemb: str = 'learn'
  add_position_embedding: bool = True
  scan: bool = False
  remat: bool = False
  sow_weights: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def _drop_path_rates(self) -> np.ndarray:
    """Linear stochastic-depth schedule over depth (0 for the first block), as in DeiT and Swin."""
    return np.linspace(0., self.stochastic_depth, self.num_layers)

  @nn.compact
  def __call__(self, x: Array, *, train: bool, grid: tuple[int, int] | None = None) -> Array:
    if self.add_position_embedding:
      x = AddPositionEmbs(posemb=self.posemb, grid=grid, param_dtype=self.param_dtype,
                          name='posembed_input')(x)
    x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=not train)
    x = nn.with_logical_constraint(x.astype(self.dtype), ('batch', 'length', 'embed'))

    block_kwargs = dict(
        mlp_dim=self.mlp_dim, num_heads=self.num_heads, dropout_rate=self.dropout_rate,
        attention_dropout_rate=self.attention_dropout_rate,
        gelu_approximate=self.gelu_approximate, init_values=self.init_values,
        qk_norm=self.qk_norm, float32_logits=self.float32_logits,
        sow_weights=self.sow_weights, dtype=self.dtype,
        param_dtype=self.param_dtype)
    if self.scan:
      block_cls = _ScannedBlock
      if self.remat:
        block_cls = nn.remat(block_cls, prevent_cse=False, static_argnums=(3,))
      scanned = nn.scan(block_cls, variable_axes={'params': 0, 'intermediates': 0},
                        split_rngs={'params': True, 'dropout': True},
                        in_axes=(0, nn.broadcast), length=self.num_layers)
      x, _ = scanned(name='encoderblock', **block_kwargs)(
          x, jnp.asarray(self._drop_path_rates()), not train)
    else:
      block_cls = nn.remat(Encoder1DBlock, static_argnums=(2,)) if self.remat else Encoder1DBlock
      for i, rate in enumerate(self._drop_path_rates().tolist()):
        x = block_cls(stochastic_depth=rate, name=f'encoderblock_{i}', **block_kwargs)(
            x, not train)
    return nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, param_dtype=self.param_dtype,
                        name='encoder_norm')(x)


def posemb_sincos_2d(h: int, w: int, width: int, temperature: float = 10_000.) -> np.ndarray:
  """Fixed 2D sine-cosine position embedding (MoCo v3, big_vision), shape (1, h*w, width)."""
  if width % 4:
    raise ValueError(f'sincos2d position embedding needs a width divisible by 4, got {width}')
  y, x = np.mgrid[:h, :w]
  omega = 1. / temperature**(np.arange(width // 4) / (width // 4 - 1))
  y = y.reshape(-1)[:, None] * omega[None, :]
  x = x.reshape(-1)[:, None] * omega[None, :]
  return np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)[None].astype(
      np.float32)


class AddPositionEmbs(nn.Module):
  """Adds a learned (`pos_embedding`, normal(0.02) init) or fixed sincos2d position embedding."""
  posemb: str = 'learn'
  grid: tuple[int, int] | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if x.ndim != 3:
      raise ValueError(f'AddPositionEmbs expects (batch, tokens, width), got shape {x.shape}')
    if self.posemb == 'learn':
      pe = self.param('pos_embedding', nn.initializers.normal(stddev=0.02),
                      (1,) + x.shape[1:], self.param_dtype)
    elif self.posemb == 'sincos2d':
      if self.grid is None:
        raise ValueError('sincos2d position embedding needs the patch grid')
      h, w = self.grid
      pe = jnp.asarray(posemb_sincos_2d(h, w, x.shape[-1]))
      prefix = x.shape[1] - h * w
      pe = jnp.concatenate([jnp.zeros((1, prefix, x.shape[-1])), pe], axis=1)
    else:
      raise ValueError(f"Unknown posemb {self.posemb!r}; expected 'learn' or 'sincos2d'")
    return x + pe.astype(x.dtype)


class MAPHead(nn.Module):
  """Multihead attention pooling (big_vision): a learned probe attends over all tokens."""
  mlp_dim: int
  num_heads: int
  gelu_approximate: bool = True
  float32_logits: bool = False
  sow_weights: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    n, _, d = x.shape
    probe = self.param('probe', nn.initializers.xavier_uniform(), (1, 1, d), self.param_dtype)
    probe = jnp.tile(probe, [n, 1, 1]).astype(self.dtype)
    x = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=nn.initializers.xavier_uniform(),
        attention_fn=functools.partial(layers.attention_fn, float32_logits=self.float32_logits),
        name='MultiHeadDotProductAttention_0')(probe, x, sow_weights=self.sow_weights)
    y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, param_dtype=self.param_dtype,
                     name='LayerNorm_0')(x)
    x = x + layers.MlpBlock(mlp_dim=self.mlp_dim, gelu_approximate=self.gelu_approximate,
                            dtype=self.dtype, param_dtype=self.param_dtype,
                            name='MlpBlock_0')(y, deterministic=True)
    return x[:, 0]


class VisionTransformer(nn.Module):
  """ViT (Dosovitskiy et al. 2021), and with `resnet` set the hybrid R+ViT of the same paper.

  Attributes:
    num_classes: head size; None returns the pre-logits features (no head parameters), which
      are also sown as `features` (`models.outputs`).
    patches: ConfigDict/dict with `size` (ph, pw), the patch (or, for hybrids, the feature-map
      patch) size.
    transformer: encoder fields (see `Encoder`): num_layers, mlp_dim, num_heads, dropout_rate,
      attention_dropout_rate and optionally stochastic_depth, gelu_approximate, scan, remat,
      init_values (LayerScale), qk_norm and float32_logits (bfloat16 attention logits kept in
      float32: about 8x less attention error, more memory; BENCHMARKS.md).
    hidden_size: token width D.
    resnet: None for ViT; for hybrids a dict with `num_layers` (units per stage) and
      `width_factor`.
    representation_size: width of the `pre_logits` Dense + tanh layer (pre-training), or None.
    classifier: 'token' ([CLS] row), 'gap' (mean of tokens), 'map' (attention pooling),
      'token_unpooled' / 'unpooled' (all tokens, no head).
    head_bias_init: constant for the head bias (pre-training uses -10).
    head_zero_init: zero kernel as in the original (fine-tuning); False uses LeCun normal.
    posemb: 'learn' (checkpoint-compatible) or 'sincos2d' (fixed).
    dtype: compute dtype (e.g. 'bfloat16'); parameters stay in `param_dtype`.
    distilled: DeiT's distillation token `dist` after `cls`, with its own head `head_dist`. The
      model returns the two heads' average in every mode and sows each head's logits as
      `cls_logits` and `dist_logits` (`models.outputs`), which the train step reads.
    reg_tokens: number of register tokens (`reg`, after `cls`/`dist`, as timm's `reg_token`);
      they take position-embedding rows and are left out of 'gap' and 'map' pooling, as in timm.
    model_name: zoo name, informational.
  """
  num_classes: Optional[int]
  patches: Any
  transformer: Any
  hidden_size: int
  resnet: Optional[Any] = None
  representation_size: Optional[int] = None
  classifier: str = 'token'
  head_bias_init: float = 0.
  head_zero_init: bool = True
  posemb: str = 'learn'
  dtype: Any = 'float32'
  param_dtype: Any = 'float32'
  sow_weights: bool = False
  distilled: bool = False
  reg_tokens: int = 0
  model_name: Optional[str] = None

  @nn.compact
  def __call__(self, inputs: Array, *, train: bool = False) -> Array:
    dtype, param_dtype = layers.as_dtype(self.dtype), layers.as_dtype(self.param_dtype)
    layers.check_images(inputs, 'VisionTransformer')
    x = inputs.astype(dtype)

    if self.resnet is not None:
      x = bit_model.hybrid_root_and_stages(x, dtype=dtype, param_dtype=param_dtype,
                                               **self.resnet)

    ph, pw = self.patches['size']
    remainder = (x.shape[1] % ph, x.shape[2] % pw)
    if any(remainder) and (x.shape[1:3], (ph, pw)) not in _REMAINDERS_LOGGED:
      # Dropped by the VALID patch convolution, as big_vision's and timm's models do (SigLIP
      # So400m/14 runs at 384 px on a 27x27 grid).
      _REMAINDERS_LOGGED.add((x.shape[1:3], (ph, pw)))
      logging.info('Input feature map %s is not divisible by the patch size %s: the last %d rows '
                   'and %d columns are dropped', x.shape[1:3], (ph, pw), *remainder)
    x = nn.Conv(self.hidden_size, (ph, pw), strides=(ph, pw), padding='VALID', dtype=dtype,
                param_dtype=param_dtype, name='embedding')(x)
    n, h, w, c = x.shape
    x = jnp.reshape(x, (n, h * w, c))

    prefix = []
    if self.classifier in ('token', 'token_unpooled'):
      prefix.append(self.param('cls', nn.initializers.zeros, (1, 1, c), param_dtype))
      if self.distilled:
        prefix.append(self.param('dist', nn.initializers.normal(stddev=0.02), (1, 1, c),
                                 param_dtype))
    elif self.distilled:
      raise ValueError(f"distilled=True needs classifier 'token', got {self.classifier!r}")
    if self.reg_tokens:
      if self.distilled:
        raise ValueError('reg_tokens cannot be combined with distilled=True')
      prefix.append(self.param('reg', nn.initializers.normal(stddev=1e-6),
                               (1, self.reg_tokens, c), param_dtype))
    if prefix:
      prefix = jnp.concatenate(prefix, axis=1).astype(x.dtype)
      x = jnp.concatenate([jnp.tile(prefix, [n, 1, 1]), x], axis=1)

    encoder_fields = dict(self.transformer)
    x = Encoder(posemb=self.posemb, sow_weights=self.sow_weights, dtype=dtype,
                param_dtype=param_dtype, name='Transformer', **encoder_fields)(
                    x, train=train, grid=(h, w))

    x_dist = x[:, 1] if self.distilled and self.classifier == 'token' else None
    if self.classifier == 'token':
      x = x[:, 0]
    elif self.classifier == 'gap':
      x = jnp.mean(x[:, self.reg_tokens:], axis=1)
    elif self.classifier == 'map':
      x = MAPHead(mlp_dim=encoder_fields['mlp_dim'], num_heads=encoder_fields['num_heads'],
                  gelu_approximate=encoder_fields.get('gelu_approximate', True),
                  float32_logits=encoder_fields.get('float32_logits', False),
                  sow_weights=self.sow_weights, dtype=dtype, param_dtype=param_dtype,
                  name='MAPHead_0')(x[:, self.reg_tokens:])
    elif self.classifier in ('token_unpooled', 'unpooled'):
      return x
    else:
      raise ValueError(f"Unknown classifier {self.classifier!r}; expected 'token', 'gap', "
                       "'map', 'token_unpooled' or 'unpooled'")

    if self.representation_size is not None:
      x = nn.Dense(self.representation_size, dtype=dtype, param_dtype=param_dtype,
                   name='pre_logits')(x)
      x = jnp.tanh(x)

    outputs.sow(self, outputs.FEATURES, x)
    if self.num_classes is None:
      return x
    kernel_init = nn.initializers.zeros if self.head_zero_init else nn.initializers.lecun_normal()
    head = functools.partial(nn.Dense, self.num_classes, dtype=dtype, param_dtype=param_dtype,
                             kernel_init=kernel_init,
                             bias_init=nn.initializers.constant(self.head_bias_init))
    x = head(name='head')(x).astype(jnp.float32)
    if x_dist is None:
      return x
    # DeiT: the class-token head learns the labels and the distillation-token head the teacher;
    # the train step reads the two by name. The answer, in every mode, is their average.
    x_dist = head(name='head_dist')(x_dist).astype(jnp.float32)
    outputs.sow(self, outputs.CLS_LOGITS, x)
    outputs.sow(self, outputs.DIST_LOGITS, x_dist)
    return (x + x_dist) / 2
