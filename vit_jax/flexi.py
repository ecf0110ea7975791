"""FlexiViT patch-size change: resize a patch-embedding kernel so tokens stay the same.

Resizing a patch x bilinearly to the new size is linear, `resize(x) = M x`. The new kernel `w'`
should give the same token, `<M x, w'> = <x, w>` for every x, so `w' = pinv(M^T) w`: big_vision's
`resample_patchemb` (Beyer et al. 2023, FlexiViT). Exact when the patch grows; the least-squares
best when it shrinks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


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
    ValueError: the kernel is not 4-dimensional (HWIO).
  """
  kernel = np.asarray(kernel)
  if kernel.ndim != 4:
    raise ValueError(f'Patch-embedding kernel must be (h, w, in, out), got {kernel.shape}')
  h, w, cin, cout = kernel.shape
  new_size = tuple(int(s) for s in new_size)
  if new_size == (h, w):
    return kernel
  pinv = np.linalg.pinv(resize_matrix((h, w), new_size).T)  # (nh * nw, h * w)
  resized = pinv @ kernel.reshape(h * w, cin * cout).astype(np.float64)
  return resized.reshape(*new_size, cin, cout).astype(kernel.dtype)
