"""Swin's relative position bias tables resized to another window size.

`resize_relative_position_bias_table`: each head's table as a ((2w-1), (2w-1)) image, resized
bicubic as the official loader does (torch `F.interpolate`, reproduced in numpy) or geometric as
timm does (BEiT's resize).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from vit_jax.checkpoint.errors import CheckpointError


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
