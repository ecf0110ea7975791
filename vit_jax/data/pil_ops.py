"""Pillow's image operations, reimplemented in TensorFlow to match it pixel for pixel.

The ops that `augment.randaugment` draws from (as timm applies them through Pillow): colour and
contrast enhancements, posterize, solarize, equalize, and affine warps. Each takes a uint8
(H, W, 3) image and returns one; arithmetic runs in float32 on the 0..255 scale.
"""

from __future__ import annotations

import math
from typing import Sequence

import tensorflow as tf


def _to_uint8(x: tf.Tensor) -> tf.Tensor:
  return tf.cast(tf.clip_by_value(tf.round(x), 0., 255.), tf.uint8)


def _blend(degenerate: tf.Tensor, image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """PIL ImageEnhance: degenerate + factor * (image - degenerate); factor 1 is the identity."""
  degenerate, image = tf.cast(degenerate, tf.float32), tf.cast(image, tf.float32)
  return _to_uint8(degenerate + factor * (image - degenerate))


def _grayscale(image: tf.Tensor) -> tf.Tensor:
  """PIL's 'L' conversion (ITU-R 601-2 luma), rounded, as (H, W, 1) float."""
  weights = tf.constant([0.299, 0.587, 0.114], tf.float32)
  return tf.round(tf.reduce_sum(tf.cast(image, tf.float32) * weights, -1, keepdims=True))


def invert(image: tf.Tensor) -> tf.Tensor:
  return 255 - image


def posterize(image: tf.Tensor, bits: tf.Tensor) -> tf.Tensor:
  """Keeps the `bits` most significant bits of each channel (8 or more: unchanged)."""
  bits = tf.clip_by_value(tf.cast(bits, tf.int32), 0, 8)
  mask = tf.cast(256 - tf.bitwise.left_shift(1, 8 - bits), tf.uint8)
  return tf.bitwise.bitwise_and(image, mask)


def solarize(image: tf.Tensor, threshold: tf.Tensor) -> tf.Tensor:
  """Inverts the pixels at or above `threshold` (256: unchanged)."""
  pixels = tf.cast(image, tf.int32)
  return tf.cast(tf.where(pixels >= tf.cast(threshold, tf.int32), 255 - pixels, pixels), tf.uint8)


def solarize_add(image: tf.Tensor, addition: tf.Tensor, threshold: int = 128) -> tf.Tensor:
  """Adds `addition` to the pixels below `threshold`, saturating at 255."""
  pixels = tf.cast(image, tf.int32)
  added = tf.minimum(pixels + tf.cast(addition, tf.int32), 255)
  return tf.cast(tf.where(pixels < threshold, added, pixels), tf.uint8)


def color(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """Saturation: blends with the grayscale image."""
  return _blend(tf.broadcast_to(_grayscale(image), tf.shape(image)), image, factor)


def contrast(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """Blends with a flat image at the mean grayscale level."""
  mean = tf.round(tf.reduce_mean(_grayscale(image)))
  return _blend(tf.fill(tf.shape(image), mean), image, factor)


def brightness(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """Blends with black."""
  return _blend(tf.zeros_like(image, tf.float32), image, factor)


def sharpness(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """Blends with PIL's SMOOTH filter (3x3, centre 5, others 1, / 13); borders stay as they are."""
  x = tf.cast(image, tf.float32)[None]
  kernel = tf.constant([[1., 1., 1.], [1., 5., 1.], [1., 1., 1.]]) / 13.
  kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
  smooth = tf.round(tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], 'VALID'))[0]
  degenerate = tf.pad(smooth, [[1, 1], [1, 1], [0, 0]])
  interior = tf.pad(tf.ones_like(smooth), [[1, 1], [1, 1], [0, 0]])
  degenerate = interior * degenerate + (1. - interior) * x[0]
  return _blend(degenerate, image, factor)


def auto_contrast(image: tf.Tensor) -> tf.Tensor:
  """Stretches each channel so that its darkest pixel becomes 0 and its brightest 255."""
  x = tf.cast(image, tf.float32)
  lo = tf.reduce_min(x, axis=(0, 1), keepdims=True)
  hi = tf.reduce_max(x, axis=(0, 1), keepdims=True)
  scale = 255. / tf.maximum(hi - lo, 1.)
  stretched = tf.floor((x - lo) * scale)  # PIL truncates its lookup table.
  return tf.where(hi > lo, _to_uint8(stretched), image)


def _equalize_channel(channel: tf.Tensor) -> tf.Tensor:
  """PIL's histogram equalisation of one uint8 channel."""
  values = tf.cast(channel, tf.int32)
  hist = tf.math.bincount(tf.reshape(values, [-1]), minlength=256, maxlength=256)
  last = tf.gather(hist, tf.reduce_max(tf.where(hist > 0)))
  step = (tf.reduce_sum(hist) - last) // 255
  safe_step = tf.maximum(step, 1)
  lut = (tf.cumsum(hist, exclusive=True) + safe_step // 2) // safe_step
  lut = tf.clip_by_value(lut, 0, 255)
  equalized = tf.cast(tf.gather(lut, values), tf.uint8)
  # A flat channel (one used level, or too few pixels above the last level) is left as it is.
  return tf.where(step > 0, equalized, channel)


def equalize(image: tf.Tensor) -> tf.Tensor:
  return tf.stack([_equalize_channel(image[..., c]) for c in range(3)], axis=-1)


def _affine(image: tf.Tensor, coeffs: Sequence[tf.Tensor], fill: Sequence[int]) -> tf.Tensor:
  """PIL `Image.transform(AFFINE, coeffs)` with bilinear sampling and a constant colour fill.

  `coeffs` (a, b, c, d, e, f) map output to input in PIL's continuous coordinates (pixel centres
  at +0.5): x_in = a x + b y + c, y_in = d x + e y + f. TF's projective transform uses integer
  pixel centres, hence the half-pixel terms. PIL fills an output pixel when its source point lies
  outside the image and otherwise interpolates from clamped edge pixels; TF does both only in
  pieces: bilinear with edge clamping ('NEAREST' fill mode) and, for the inside test, the
  transform of an all-ones image with nearest sampling and zero fill (TF's nearest sampling
  rounds, so its in-bounds region is PIL's [0, size) in continuous coordinates).
  """
  a, b, c, d, e, f = (tf.cast(v, tf.float32) for v in coeffs)
  transform = tf.stack([a, b, c + 0.5 * (a + b) - 0.5, d, e, f + 0.5 * (d + e) - 0.5, 0., 0.])

  def warp(x, interpolation, fill_mode):
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=x[None], transforms=transform[None], output_shape=tf.shape(x)[:2],
        fill_value=0., interpolation=interpolation, fill_mode=fill_mode)[0]

  x = tf.cast(image, tf.float32)
  warped = warp(x, 'BILINEAR', 'NEAREST')
  inside = warp(tf.ones_like(x[..., :1]), 'NEAREST', 'CONSTANT') > 0.5
  return _to_uint8(tf.where(inside, warped, tf.constant(fill, tf.float32)))


def rotate(image: tf.Tensor, degrees: tf.Tensor, fill: Sequence[int]) -> tf.Tensor:
  """Counter-clockwise rotation about the image centre (PIL `Image.rotate`)."""
  h, w = (tf.cast(s, tf.float32) for s in (tf.shape(image)[0], tf.shape(image)[1]))
  angle = -tf.cast(degrees, tf.float32) * math.pi / 180.
  cos, sin = tf.cos(angle), tf.sin(angle)
  cx, cy = w / 2., h / 2.
  return _affine(image, (cos, sin, cx - cos * cx - sin * cy,
                         -sin, cos, cy + sin * cx - cos * cy), fill)


def shear_x(image: tf.Tensor, factor: tf.Tensor, fill: Sequence[int]) -> tf.Tensor:
  return _affine(image, (1., factor, 0., 0., 1., 0.), fill)


def shear_y(image: tf.Tensor, factor: tf.Tensor, fill: Sequence[int]) -> tf.Tensor:
  return _affine(image, (1., 0., 0., factor, 1., 0.), fill)


def translate_x_rel(image: tf.Tensor, fraction: tf.Tensor, fill: Sequence[int]) -> tf.Tensor:
  pixels = fraction * tf.cast(tf.shape(image)[1], tf.float32)
  return _affine(image, (1., 0., pixels, 0., 1., 0.), fill)


def translate_y_rel(image: tf.Tensor, fraction: tf.Tensor, fill: Sequence[int]) -> tf.Tensor:
  pixels = fraction * tf.cast(tf.shape(image)[0], tf.float32)
  return _affine(image, (1., 0., 0., 0., 1., pixels), fill)
