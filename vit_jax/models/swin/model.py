"""Swin Transformer (Liu et al. 2021) as Flax linen modules.

Submodule names follow the PyTorch state dicts of the official release and of timm
(`layers_{i}/blocks_{j}/attn/qkv`, ...), with `.` turned into `/` and stage/block numbers joined
by `_`, so that `timm_keys` maps a checkpoint key to our path by renaming alone. As in timm's
current layout, the patch merging that opens stage i (i >= 1) lives in `layers_{i}/downsample`.

Relative position indices and shifted-window masks depend only on static shapes: they are numpy
constants computed while tracing, never parameters, so a model at a new resolution or window size
needs nothing but its (resized) relative position bias tables.
"""

from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.models import layers
from vit_jax.models import outputs

Array = jax.Array
Dtype = Any
Window = tuple[int, int]

# Logit added between tokens that came from different image regions after the cyclic shift. The
# official code adds -100, not -inf: exp(-100) is tiny but not zero, so we keep it for parity.
_MASK_VALUE = -100.
_LN_EPSILON = 1e-5
_dense_init = nn.initializers.truncated_normal(stddev=0.02)


def _pair(value: int | Sequence[int]) -> Window:
  if isinstance(value, (int, np.integer)):
    return int(value), int(value)
  h, w = value
  return int(h), int(w)


def stage_window(resolution: Window, window_size: int | Sequence[int],
                 shift: bool) -> tuple[Window, Window]:
  """The window and shift that a block uses at a given feature-map resolution.

  Per axis, as timm does: where the resolution fits in one window the window shrinks to the
  resolution and that axis is not shifted (shifting a single window would only scramble it). For
  square inputs this equals the official rule.

  Args:
    resolution: (h, w) of the block's feature map.
    window_size: the configured window, an int or (h, w).
    shift: whether this is a shifted-window block (odd blocks of a stage).

  Returns:
    ((window_h, window_w), (shift_h, shift_w)).
  """
  window, shifts = [], []
  for res, win in zip(resolution, _pair(window_size)):
    if res <= win:
      window.append(res)
      shifts.append(0)
    else:
      window.append(win)
      shifts.append(win // 2 if shift else 0)
  return tuple(window), tuple(shifts)


def stage_windows(image_size: int | Sequence[int], patch_size: int, num_stages: int,
                  window_size: int | Sequence[int]) -> list[Window]:
  """Effective (h, w) window of each stage for an input of `image_size` pixels."""
  h, w = _pair(image_size)
  res = (h // patch_size, w // patch_size)
  windows = []
  for _ in range(num_stages):
    windows.append(stage_window(res, window_size, shift=False)[0])
    res = (res[0] // 2, res[1] // 2)
  return windows


def relative_position_index(window: Window) -> np.ndarray:
  """(N, N) indices into the ((2wh-1)(2ww-1), heads) bias table, N = wh * ww.

  Entry (a, b) encodes the offset of token a from token b within the window: both coordinate
  differences shifted to be non-negative, the row offset scaled by the table's row length.
  """
  wh, ww = window
  coords = np.stack(np.meshgrid(np.arange(wh), np.arange(ww), indexing='ij')).reshape(2, -1)
  rel = coords[:, :, None] - coords[:, None, :]
  return (rel[0] + wh - 1) * (2 * ww - 1) + (rel[1] + ww - 1)


def window_partition(x: Array, window: Window) -> Array:
  """(B, H, W, C) -> (B, num_windows, wh * ww, C), windows in row-major order (jax or numpy)."""
  b, h, w, c = x.shape
  wh, ww = window
  x = x.reshape(b, h // wh, wh, w // ww, ww, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, (h // wh) * (w // ww), wh * ww, c)


def window_merge(windows: Array, window: Window, resolution: Window) -> Array:
  """Inverse of `window_partition`: (B, num_windows, wh * ww, C) -> (B, H, W, C)."""
  b, _, _, c = windows.shape
  (wh, ww), (h, w) = window, resolution
  x = windows.reshape(b, h // wh, w // ww, wh, ww, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


def shifted_window_mask(resolution: Window, window: Window, shift: Window) -> np.ndarray:
  """(num_windows, N, N) additive mask for attention in cyclically shifted windows.

  After rolling the map by -shift, windows on the bottom and right edges hold tokens from up to
  four regions that are not adjacent in the image; tokens of different regions must not attend
  to each other, so their logits get `_MASK_VALUE`.
  """
  h, w = resolution
  region = np.zeros((h, w), np.int32)
  label = 0
  for rows in (slice(0, h - window[0]), slice(h - window[0], h - shift[0]), slice(h - shift[0], h)):
    for cols in (slice(0, w - window[1]), slice(w - window[1], w - shift[1]),
                 slice(w - shift[1], w)):
      region[rows, cols] = label
      label += 1
  windows = np.asarray(window_partition(region[None, :, :, None], window))[0, ..., 0]
  different = windows[:, :, None] != windows[:, None, :]
  return np.where(different, _MASK_VALUE, 0.).astype(np.float32)


class WindowAttention(nn.Module):
  """Multi-head self-attention inside windows, with a learned relative position bias.

  Attention is written out rather than going through `layers.attention_fn`: the bias differs
  per window and head, and the fused kernel would need it materialised for every image of the
  batch, while here XLA fuses the broadcast into the softmax. Windows are tiny (N = 49 at 224 px),
  so a fused kernel has little to gain.
  """
  num_heads: int
  window: Window
  qkv_bias: bool = True
  dropout_rate: float = 0.
  attention_dropout_rate: float = 0.
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, mask: Optional[np.ndarray], *, deterministic: bool) -> Array:
    """x: (B, num_windows, N, C); mask: (num_windows, N, N) or None."""
    *batch, n, c = x.shape
    if c % self.num_heads:
      raise ValueError(f'Width {c} is not divisible by {self.num_heads} heads')
    head_dim = c // self.num_heads
    wh, ww = self.window
    table = self.param('relative_position_bias_table', _dense_init,
                       ((2 * wh - 1) * (2 * ww - 1), self.num_heads), self.param_dtype)
    index = relative_position_index(self.window).reshape(-1)
    bias = table[index].reshape(n, n, self.num_heads).transpose(2, 0, 1)

    qkv = nn.Dense(3 * c, use_bias=self.qkv_bias, dtype=self.dtype, param_dtype=self.param_dtype,
                   kernel_init=_dense_init, name='qkv')(x)
    # The checkpoint orders the 3C outputs as [q | k | v], each head-major.
    qkv = qkv.reshape(*batch, n, 3, self.num_heads, head_dim)
    q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
    logits = jnp.einsum('...qhd,...khd->...hqk', q * head_dim**-0.5, k)
    # Softmax in float32 also under bfloat16 compute: bias and mask add to logits whose small
    # differences bfloat16's 8-bit mantissa would round away.
    logits = logits.astype(jnp.float32) + bias.astype(jnp.float32)
    if mask is not None:
      logits = logits + mask[:, None]  # (num_windows, 1, N, N) broadcast over batch and heads.
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    weights = nn.Dropout(rate=self.attention_dropout_rate)(weights, deterministic=deterministic)
    x = jnp.einsum('...hqk,...khd->...qhd', weights, v).reshape(*batch, n, c)
    x = nn.Dense(c, dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=_dense_init,
                 name='proj')(x)
    return nn.Dropout(rate=self.dropout_rate)(x, deterministic=deterministic)


class SwinBlock(nn.Module):
  """x + Attn(LN(x)) in (shifted) windows, then x + MLP(LN(x)); x is (B, H, W, C)."""
  num_heads: int
  window_size: int | Sequence[int]
  shift: bool
  mlp_ratio: float = 4.
  qkv_bias: bool = True
  dropout_rate: float = 0.
  attention_dropout_rate: float = 0.
  stochastic_depth: float = 0.
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, deterministic: bool) -> Array:
    _, h, w, c = x.shape
    window, shift = stage_window((h, w), self.window_size, self.shift)
    if h % window[0] or w % window[1]:
      raise ValueError(f'Feature map {(h, w)} is not divisible by the window {window}; choose an '
                       'input size that is patch_size * 2**(stages-1) * window per axis')
    norm = functools.partial(nn.LayerNorm, epsilon=_LN_EPSILON, dtype=self.dtype,
                             param_dtype=self.param_dtype)

    y = norm(name='norm1')(x)
    if any(shift):
      y = jnp.roll(y, (-shift[0], -shift[1]), axis=(1, 2))
      mask = shifted_window_mask((h, w), window, shift)
    else:
      mask = None
    y = WindowAttention(
        num_heads=self.num_heads, window=window, qkv_bias=self.qkv_bias,
        dropout_rate=self.dropout_rate, attention_dropout_rate=self.attention_dropout_rate,
        dtype=self.dtype, param_dtype=self.param_dtype, name='attn')(
            window_partition(y, window), mask, deterministic=deterministic)
    y = window_merge(y, window, (h, w))
    if any(shift):
      y = jnp.roll(y, shift, axis=(1, 2))
    x = x + layers.DropPath()(y, self.stochastic_depth, deterministic)

    y = norm(name='norm2')(x)
    y = layers.MlpBlock(
        mlp_dim=int(c * self.mlp_ratio), dropout_rate=self.dropout_rate, gelu_approximate=False,
        kernel_init=_dense_init, bias_init=nn.initializers.zeros, dense_names=('fc1', 'fc2'),
        dtype=self.dtype, param_dtype=self.param_dtype, name='mlp')(
            y, deterministic=deterministic)
    return x + layers.DropPath()(y, self.stochastic_depth, deterministic)


class PatchMerging(nn.Module):
  """Halves the resolution: 2x2 neighbours concatenated (4C), LayerNorm, bias-free Dense to 2C."""
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b, h, w, c = x.shape
    if h % 2 or w % 2:
      raise ValueError(f'PatchMerging needs an even feature map, got {(h, w)}')
    # The original's channel order: (row, col) offsets (0, 0), (1, 0), (0, 1), (1, 1).
    x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]],
                        axis=-1)
    x = nn.LayerNorm(epsilon=_LN_EPSILON, dtype=self.dtype, param_dtype=self.param_dtype,
                     name='norm')(x)
    return nn.Dense(2 * c, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
                    kernel_init=_dense_init, name='reduction')(x)


class SwinStage(nn.Module):
  """Optional PatchMerging (`downsample`), then `depth` blocks alternating W-MSA and SW-MSA."""
  depth: int
  num_heads: int
  window_size: int | Sequence[int]
  downsample: bool
  stochastic_depth: Sequence[float]
  mlp_ratio: float = 4.
  qkv_bias: bool = True
  dropout_rate: float = 0.
  attention_dropout_rate: float = 0.
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, deterministic: bool) -> Array:
    if self.downsample:
      x = PatchMerging(dtype=self.dtype, param_dtype=self.param_dtype, name='downsample')(x)
    for j in range(self.depth):
      x = SwinBlock(
          num_heads=self.num_heads, window_size=self.window_size, shift=j % 2 == 1,
          mlp_ratio=self.mlp_ratio, qkv_bias=self.qkv_bias, dropout_rate=self.dropout_rate,
          attention_dropout_rate=self.attention_dropout_rate,
          stochastic_depth=self.stochastic_depth[j], dtype=self.dtype,
          param_dtype=self.param_dtype, name=f'blocks_{j}')(x, deterministic=deterministic)
    return x


class PatchEmbed(nn.Module):
  """Non-overlapping patch_size x patch_size convolution (`proj`), then LayerNorm (`norm`)."""
  embed_dim: int
  patch_size: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    p = self.patch_size
    x = nn.Conv(self.embed_dim, (p, p), strides=(p, p), padding='VALID', dtype=self.dtype,
                param_dtype=self.param_dtype, name='proj')(x)
    return nn.LayerNorm(epsilon=_LN_EPSILON, dtype=self.dtype, param_dtype=self.param_dtype,
                        name='norm')(x)


class SwinTransformer(nn.Module):
  """Swin Transformer: hierarchical ViT with shifted-window attention.

  Attributes:
    num_classes: head size; None returns the pooled features (no head parameters), which are
      also sown as `features` (`models.outputs`).
    embed_dim: width C of the first stage; stage i has width C * 2**i.
    depths: blocks per stage.
    num_heads: attention heads per stage.
    window_size: attention window (int or (h, w)) in tokens; 7 at 224 px, 12 at 384 px. A stage
      whose feature map fits in one window uses the map as its window and does not shift.
    patch_size: side of the non-overlapping patches of the embedding.
    mlp_ratio: MLP hidden width over block width.
    qkv_bias: whether the qkv projection has a bias.
    dropout_rate: dropout after the embedding, the MLP activation and both output projections.
    attention_dropout_rate: dropout on the attention weights.
    stochastic_depth: drop-path rate of the last block; it grows linearly from 0 over all blocks.
    head_zero_init: zero head kernel (fine-tuning); otherwise truncated normal(0.02) like every
      other Dense, as in the official code.
    dtype: compute dtype (e.g. 'bfloat16'); parameters stay in `param_dtype`.
    model_name: zoo name, informational.
  """
  num_classes: Optional[int]
  embed_dim: int = 96
  depths: Sequence[int] = (2, 2, 6, 2)
  num_heads: Sequence[int] = (3, 6, 12, 24)
  window_size: int | Sequence[int] = 7
  patch_size: int = 4
  mlp_ratio: float = 4.
  qkv_bias: bool = True
  dropout_rate: float = 0.
  attention_dropout_rate: float = 0.
  stochastic_depth: float = 0.
  head_zero_init: bool = False
  dtype: Any = 'float32'
  param_dtype: Any = 'float32'
  model_name: Optional[str] = None

  def _drop_path_rates(self) -> list[list[float]]:
    """Linear stochastic-depth schedule over all blocks of all stages, split by stage."""
    rates = np.linspace(0., self.stochastic_depth, sum(self.depths)).tolist()
    bounds = np.cumsum([0, *self.depths])
    return [rates[start:end] for start, end in zip(bounds[:-1], bounds[1:])]

  @nn.compact
  def __call__(self, inputs: Array, *, train: bool = False) -> Array:
    dtype, param_dtype = layers.as_dtype(self.dtype), layers.as_dtype(self.param_dtype)
    layers.check_images(inputs, 'SwinTransformer')
    if len(self.depths) != len(self.num_heads):
      raise ValueError(f'depths {tuple(self.depths)} and num_heads {tuple(self.num_heads)} '
                       'must have one entry per stage')
    _, h, w, _ = inputs.shape
    reduction = self.patch_size * 2**(len(self.depths) - 1)
    if h % reduction or w % reduction:
      raise ValueError(f'Input {(h, w)} must be divisible by patch_size * 2**(stages-1) = '
                       f'{reduction} per axis')

    x = inputs.astype(dtype)
    x = PatchEmbed(embed_dim=self.embed_dim, patch_size=self.patch_size, dtype=dtype,
                   param_dtype=param_dtype, name='patch_embed')(x)
    x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=not train)
    for i, (depth, heads, rates) in enumerate(
        zip(self.depths, self.num_heads, self._drop_path_rates())):
      x = SwinStage(
          depth=depth, num_heads=heads, window_size=self.window_size, downsample=i > 0,
          stochastic_depth=rates, mlp_ratio=self.mlp_ratio, qkv_bias=self.qkv_bias,
          dropout_rate=self.dropout_rate, attention_dropout_rate=self.attention_dropout_rate,
          dtype=dtype, param_dtype=param_dtype, name=f'layers_{i}')(x, deterministic=not train)
    x = nn.LayerNorm(epsilon=_LN_EPSILON, dtype=dtype, param_dtype=param_dtype, name='norm')(x)
    x = jnp.mean(x, axis=(1, 2))

    outputs.sow(self, outputs.FEATURES, x)
    if self.num_classes is None:
      return x
    kernel_init = nn.initializers.zeros if self.head_zero_init else _dense_init
    x = nn.Dense(self.num_classes, dtype=dtype, param_dtype=param_dtype, kernel_init=kernel_init,
                 name='head')(x)
    return x.astype(jnp.float32)
