"""Resizing checkpoint arrays for another model geometry.

- `interpolate_posembed`: a learned position embedding to a new patch grid, as the original
  library does (`scipy.ndimage.zoom`, order 1), as FlexiViT's model does at run time, or as
  timm does (`POSEMB_METHODS`); prefix rows ([CLS], DeiT's `dist`) kept.
- `resample_patchemb`: FlexiViT's patch-size change. Resizing a patch x bilinearly is linear,
  `resize(x) = M x`; the new kernel `w'` should give the same token, `<M x, w'> = <x, w>` for
  every x, so `w' = pinv(M^T) w` (Beyer et al. 2023). Exact when the patch grows; the
  least-squares best when it shrinks.
"""

from __future__ import annotations

import math

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
