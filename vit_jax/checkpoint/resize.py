"""Resizing checkpoint arrays for another model geometry.

- `interpolate_posembed`: a learned position embedding to a new patch grid, as the original
  library does (`scipy.ndimage.zoom`, order 1), as FlexiViT's model does at run time, or as
  timm does (`POSEMB_METHODS`); prefix rows ([CLS], DeiT's `dist`) kept.
- `resize_relative_position_bias_table`: a Swin table to another window size, bicubic as the
  official loader (torch `F.interpolate`, reproduced in numpy) or geometric as timm.
- `resample_patchemb`: FlexiViT's patch-size change. Resizing a patch x bilinearly is linear,
  `resize(x) = M x`; the new kernel `w'` should give the same token, `<M x, w'> = <x, w>` for
  every x, so `w' = pinv(M^T) w` (Beyer et al. 2023). Exact when the patch grows; the
  least-squares best when it shrinks.
"""

from __future__ import annotations

import math
from typing import Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import scipy.ndimage

from vit_jax.checkpoint.errors import CheckpointError


# ---------------------------------------------------------------------------------------------
# Position embeddings.


def _square_side(n: int, what: str) -> int:
  side = math.isqrt(n)
  if side * side != n:
    raise CheckpointError(f'{what} has {n} grid tokens, which is not a square; pass the grid '
                          '(h, w) explicitly')
  return side


# How `interpolate_posembed` resizes the grid, by the reference it follows.
POSEMB_METHODS = {
    # The original library and big_vision's `resample_posemb` (fine-tuning initialisation):
    # linear, the corner rows aligned.
    'zoom': 'scipy.ndimage.zoom(order=1)',
    # FlexiViT's model at another patch size: jax.image.resize(..., 'linear'), half-pixel
    # centres, antialiased when shrinking.
    'flexi': "jax.image.resize(method='linear')",
    # timm's resample_abs_pos_embed: F.interpolate(mode='bicubic', antialias=True), the same
    # numbers as jax.image.resize 'cubic' with antialias (Keys a = -0.5).
    'timm': "jax.image.resize(method='cubic', antialias=True)",
}


def interpolate_posembed(posemb: np.ndarray, num_tokens: int | tuple[int, int],
                         has_class_token: bool = True, *,
                         old_grid: tuple[int, int] | None = None,
                         num_prefix_tokens: int | None = None,
                         method: str = 'zoom') -> np.ndarray:
  """Resizes a learned position embedding to a new patch grid, as the original library does.

  The prefix rows (class token, and distillation token where present) are kept as they are; the
  grid rows are reshaped to (h, w, D) and resized by `method` (a key of `POSEMB_METHODS`):
  'zoom' (default) is the original's `scipy.ndimage.zoom(order=1)`.

  Args:
    posemb: (1, prefix + h_old * w_old, D).
    num_tokens: the new total number of tokens (prefix included) for a square grid, as in the
      original; or the new grid as (h, w), which may be non-square.
    has_class_token: whether row 0 is the class token's (ignored when `num_prefix_tokens` is set).
    old_grid: (h, w) of the stored grid; needed only when it is not square.
    num_prefix_tokens: number of rows before the grid (0 for gap models, 2 for distilled DeiT).
    method: 'zoom', 'flexi' or 'timm' (see `POSEMB_METHODS`).

  Returns:
    (1, prefix + h_new * w_new, D) float array of posemb's dtype.
  """
  posemb = np.asarray(posemb)
  if method not in POSEMB_METHODS:
    raise CheckpointError(f'Unknown position-embedding resize method {method!r}; expected one of '
                          f'{sorted(POSEMB_METHODS)}')
  if posemb.ndim != 3 or posemb.shape[0] != 1:
    raise CheckpointError(f'Position embedding must have shape (1, tokens, D), got {posemb.shape}')
  prefix_len = int(has_class_token) if num_prefix_tokens is None else num_prefix_tokens
  prefix, grid = posemb[:, :prefix_len], posemb[0, prefix_len:]
  if isinstance(num_tokens, (int, np.integer)):
    side = _square_side(int(num_tokens) - prefix_len, 'The new position embedding')
    new_h, new_w = side, side
  else:
    new_h, new_w = (int(v) for v in num_tokens)
  if old_grid is None:
    side = _square_side(len(grid), 'The stored position embedding')
    old_h, old_w = side, side
  else:
    old_h, old_w = old_grid
    if old_h * old_w != len(grid):
      raise CheckpointError(f'old_grid {old_grid} does not match {len(grid)} stored grid tokens')
  logging.info('Resizing position embedding grid %s -> %s with %s', (old_h, old_w),
               (new_h, new_w), POSEMB_METHODS[method])
  grid = grid.reshape(old_h, old_w, -1)
  if (old_h, old_w) != (new_h, new_w) and method == 'zoom':
    grid = scipy.ndimage.zoom(grid, (new_h / old_h, new_w / old_w, 1), order=1)
  elif (old_h, old_w) != (new_h, new_w):
    grid = np.asarray(jax.image.resize(
        grid.astype(np.float32), (new_h, new_w, grid.shape[-1]),
        method='linear' if method == 'flexi' else 'cubic', antialias=True))
  grid = grid.reshape(1, new_h * new_w, -1)
  return np.concatenate([prefix, grid], axis=1).astype(posemb.dtype)


# ---------------------------------------------------------------------------------------------
# Swin relative position bias tables.


def _cubic_weights(t: np.ndarray, a: float) -> np.ndarray:
  """Keys cubic convolution weights for the taps at offsets -1, 0, 1, 2 from floor(x)."""
  def near(d):  # |d| <= 1
    return ((a + 2) * d - (a + 3)) * d * d + 1

  def far(d):  # 1 < |d| < 2
    return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

  return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def _bicubic_matrix(size_in: int, size_out: int, a: float = -0.75) -> np.ndarray:
  """(size_out, size_in) matrix of 1-D bicubic resampling as in torch's F.interpolate.

  align_corners=False: output pixel centres map to `(i + 0.5) * in / out - 0.5`, which may be
  negative (torch does not clamp it for cubic); taps outside the input repeat the edge pixel.
  torch uses Keys' a = -0.75 (jax.image.resize uses -0.5 and renormalises at the edges instead
  of repeating them, so it does not match).
  """
  src = (np.arange(size_out, dtype=np.float64) + 0.5) * (size_in / size_out) - 0.5
  base = np.floor(src)
  weights = _cubic_weights(src - base, a)
  taps = np.clip(base[:, None].astype(np.int64) + np.arange(-1, 3)[None, :], 0, size_in - 1)
  matrix = np.zeros((size_out, size_in))
  np.add.at(matrix, (np.repeat(np.arange(size_out), 4), taps.reshape(-1)), weights.reshape(-1))
  return matrix


def bicubic_resize(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Resizes (..., H, W) like torch `F.interpolate(mode='bicubic', align_corners=False)`."""
  images = np.asarray(images)
  rows = _bicubic_matrix(images.shape[-2], size[0])
  cols = _bicubic_matrix(images.shape[-1], size[1])
  out = np.einsum('oh,...hw,pw->...op', rows, images.astype(np.float64), cols)
  return out.astype(images.dtype)


def _geometric_positions(src: int, dst: int) -> np.ndarray:
  """BEiT/timm: where the `src` stored offsets sit when stretched over `dst` offsets.

  The offsets from the centre grow geometrically with a ratio q found by bisection, so the table
  keeps its resolution near offset 0 (where attention is sharpest) and stretches at the edges.
  """
  half_src, half_dst = src // 2, dst // 2
  left, right = 1.01, 1.5
  while right - left > 1e-6:
    q = (left + right) / 2
    if (1 - q**half_src) / (1 - q) > half_dst:
      right = q
    else:
      left = q
  dis = np.cumsum([0.] + [q**(i + 1) for i in range(half_src - 1)]) + 1
  return np.concatenate([-dis[::-1], [0.], dis])


def geometric_resize(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Resizes (..., H, W) as timm's `resize_rel_pos_bias_table` does (without scipy).

  The stored grid is placed at geometrically spaced positions and read back by bilinear
  interpolation at the integer offsets of the new grid, clamping beyond the outermost position.
  """
  images = np.asarray(images, np.float64)

  def resample(x, axis, src, dst):
    positions = _geometric_positions(src, dst)
    targets = np.arange(dst) - dst // 2
    return np.apply_along_axis(lambda v: np.interp(targets, positions, v), axis, x)

  (h, w), (new_h, new_w) = images.shape[-2:], size
  out = resample(images, -2, h, new_h) if h != new_h else images
  out = resample(out, -1, w, new_w) if w != new_w else out
  return out.astype(np.float32)


def resize_relative_position_bias_table(table: np.ndarray, new_window: int | Sequence[int], *,
                                        old_window: int | Sequence[int] | None = None,
                                        method: str = 'bicubic') -> np.ndarray:
  """Resizes a ((2wh-1)(2ww-1), heads) table to another window size.

  Args:
    table: the stored table.
    new_window: the target window, int or (h, w).
    old_window: the stored table's window; inferred as square when None.
    method: 'bicubic' (the official loader: each head's table as a (S, S) image, torch bicubic,
      align_corners=False) or 'geometric' (timm's BEiT-style resize).

  Returns:
    The resized table, float32.
  """
  table = np.asarray(table)
  if table.ndim != 2:
    raise CheckpointError('Relative position bias table must be (positions, heads), got '
                          f'{table.shape}')
  positions, heads = table.shape
  new_h, new_w = (new_window, new_window) if isinstance(new_window, int) else new_window
  if old_window is None:
    side = math.isqrt(positions)
    if side * side != positions or side % 2 == 0:
      raise CheckpointError(f'A table of {positions} positions is not of a square window; pass '
                       'old_window')
    src = (side, side)
  else:
    old_h, old_w = (old_window, old_window) if isinstance(old_window, int) else old_window
    src = (2 * old_h - 1, 2 * old_w - 1)
    if src[0] * src[1] != positions:
      raise CheckpointError(f'old_window {old_window} needs {src[0] * src[1]} positions, the table '
                       f'has {positions}')
  dst = (2 * new_h - 1, 2 * new_w - 1)
  if src == dst:
    return table.astype(np.float32)
  images = table.T.reshape(heads, *src)
  if method == 'bicubic':
    images = bicubic_resize(images.astype(np.float32), dst)
  elif method == 'geometric':
    images = geometric_resize(images, dst)
  else:
    raise CheckpointError(f"Unknown resize method {method!r}; expected 'bicubic' or 'geometric'")
  return images.reshape(heads, -1).T.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# FlexiViT patch embeddings.


def resize_matrix(old_size: tuple[int, int], new_size: tuple[int, int]) -> np.ndarray:
  """M of shape (nh * nw, h * w): the bilinear resize of a flattened (h, w) patch."""
  h, w = old_size
  basis = jnp.eye(h * w, dtype=jnp.float32).reshape(h * w, h, w)
  resize = jax.vmap(lambda x: jax.image.resize(x, tuple(new_size), method='bilinear',
                                               antialias=False))
  return np.asarray(resize(basis), np.float64).reshape(h * w, -1).T


def resample_patchemb(kernel: np.ndarray, new_size: tuple[int, int]) -> np.ndarray:
  """A conv kernel (h, w, in, out) -> (nh, nw, in, out), by the pseudo-inverse of the resize.

  Raises:
    CheckpointError: the kernel is not 4-dimensional (HWIO).
  """
  kernel = np.asarray(kernel)
  if kernel.ndim != 4:
    raise CheckpointError(f'Patch-embedding kernel must be (h, w, in, out), got {kernel.shape}')
  h, w, cin, cout = kernel.shape
  new_size = tuple(int(s) for s in new_size)
  if new_size == (h, w):
    return kernel
  pinv = np.linalg.pinv(resize_matrix((h, w), new_size).T)  # (nh * nw, h * w)
  resized = pinv @ kernel.reshape(h * w, cin * cout).astype(np.float64)
  return resized.reshape(*new_size, cin, cout).astype(kernel.dtype)
