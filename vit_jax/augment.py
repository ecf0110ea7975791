"""Per-image augmentations of the DeiT and Swin recipes, in TensorFlow for tf.data pipelines.

- `randaugment`: RandAugment as timm implements it (`rand-m9-mstd0.5-inc1`: 2 ops per image
  drawn with replacement, each applied with probability 0.5 at a magnitude drawn from
  N(9, 0.5) clipped to [0, 10], using the 'increasing' op variants whose strength grows with the
  magnitude). Works on uint8 RGB images before normalisation.
- `random_erasing`: timm's RandomErasing (one box, up to 10 tries to fit it, 'pixel' mode fills
  with per-pixel standard normal noise). Works on the normalised float image.

Every op is `op(image, seed)` with a stateless TF seed (int tensor of shape [2]), like the ops of
`vit_jax.preprocess`, so the same seed always gives the same image. TensorFlow is imported here
and nowhere in the model code.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Callable, Sequence

import tensorflow as tf

Op = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]

# timm fills the area uncovered by geometric ops with the ImageNet mean, as uint8.
IMAGENET_FILL = (124, 116, 104)
_LEVEL_MAX = 10.  # timm's _LEVEL_DENOM: magnitudes are on a 0..10 scale.

# timm's op sets, in timm's order (the order only matters for the random choice's mapping).
RAND_TRANSFORMS = (
    'AutoContrast', 'Equalize', 'Invert', 'Rotate', 'Posterize', 'Solarize', 'SolarizeAdd',
    'Color', 'Contrast', 'Brightness', 'Sharpness', 'ShearX', 'ShearY', 'TranslateXRel',
    'TranslateYRel')
RAND_INCREASING_TRANSFORMS = (
    'AutoContrast', 'Equalize', 'Invert', 'Rotate', 'PosterizeIncreasing', 'SolarizeIncreasing',
    'SolarizeAdd', 'ColorIncreasing', 'ContrastIncreasing', 'BrightnessIncreasing',
    'SharpnessIncreasing', 'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel')


# ---------------------------------------------------------------------------------------------
# Pixel ops on uint8 (H, W, 3) images. Arithmetic runs in float32 on the 0..255 scale.


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


# ---------------------------------------------------------------------------------------------
# RandAugment.


def _enhance_increasing(level: tf.Tensor, sign: tf.Tensor) -> tf.Tensor:
  """timm's 'increasing' enhancement factor: 1 (identity) moving away by up to 0.9."""
  return tf.maximum(0.1, 1. + sign * level * 0.9)


# name -> fn(image, level, sign, fill, translate_pct), level = magnitude / 10 in [0, 1] (or
# above with magnitude_max > 10), sign = +-1 the random negation; timm's level-to-argument maps.
_OPS = {
    'AutoContrast': lambda x, l, s, fill, t: auto_contrast(x),
    'Equalize': lambda x, l, s, fill, t: equalize(x),
    'Invert': lambda x, l, s, fill, t: invert(x),
    'Rotate': lambda x, l, s, fill, t: rotate(x, s * l * 30., fill),
    'Posterize': lambda x, l, s, fill, t: posterize(x, tf.floor(l * 4.)),
    'PosterizeIncreasing': lambda x, l, s, fill, t: posterize(x, 4. - tf.floor(l * 4.)),
    'Solarize': lambda x, l, s, fill, t: solarize(x, tf.minimum(256., tf.floor(l * 256.))),
    'SolarizeIncreasing':
        lambda x, l, s, fill, t: solarize(x, 256. - tf.minimum(256., tf.floor(l * 256.))),
    'SolarizeAdd': lambda x, l, s, fill, t: solarize_add(x, tf.minimum(128., tf.floor(l * 110.))),
    'Color': lambda x, l, s, fill, t: color(x, l * 1.8 + 0.1),
    'ColorIncreasing': lambda x, l, s, fill, t: color(x, _enhance_increasing(l, s)),
    'Contrast': lambda x, l, s, fill, t: contrast(x, l * 1.8 + 0.1),
    'ContrastIncreasing': lambda x, l, s, fill, t: contrast(x, _enhance_increasing(l, s)),
    'Brightness': lambda x, l, s, fill, t: brightness(x, l * 1.8 + 0.1),
    'BrightnessIncreasing': lambda x, l, s, fill, t: brightness(x, _enhance_increasing(l, s)),
    'Sharpness': lambda x, l, s, fill, t: sharpness(x, l * 1.8 + 0.1),
    'SharpnessIncreasing': lambda x, l, s, fill, t: sharpness(x, _enhance_increasing(l, s)),
    'ShearX': lambda x, l, s, fill, t: shear_x(x, s * l * 0.3, fill),
    'ShearY': lambda x, l, s, fill, t: shear_y(x, s * l * 0.3, fill),
    'TranslateXRel': lambda x, l, s, fill, t: translate_x_rel(x, s * l * t, fill),
    'TranslateYRel': lambda x, l, s, fill, t: translate_y_rel(x, s * l * t, fill),
}


def apply_op(name: str, image: tf.Tensor, magnitude: float | tf.Tensor,
             sign: float | tf.Tensor = 1., fill: Sequence[int] = IMAGENET_FILL,
             translate_pct: float = 0.45) -> tf.Tensor:
  """Applies timm's RandAugment op `name` at `magnitude` (0..10) to a uint8 image."""
  if name not in _OPS:
    raise ValueError(f'Unknown RandAugment op {name!r}; known: {", ".join(sorted(_OPS))}')
  level = tf.cast(magnitude, tf.float32) / _LEVEL_MAX
  return _OPS[name](image, level, tf.cast(sign, tf.float32), fill, translate_pct)


def randaugment(image: tf.Tensor, seed: tf.Tensor, *, num_layers: int = 2,
                magnitude: float = 9., magnitude_std: float = 0.5,
                magnitude_max: float = _LEVEL_MAX, increasing: bool = True, prob: float = 0.5,
                ops: Sequence[str] | None = None, fill: Sequence[int] = IMAGENET_FILL,
                translate_pct: float = 0.45) -> tf.Tensor:
  """RandAugment with timm's semantics on one uint8 (H, W, 3) image.

  `num_layers` times: pick an op uniformly (with replacement), and with probability `prob` apply
  it at a magnitude drawn from N(magnitude, magnitude_std) (uniform on [0, magnitude] when the
  std is inf; fixed when 0) clipped to [0, magnitude_max]. Ops that take a direction (rotate,
  shear, translate, the 'increasing' enhancements) flip it with probability 1/2.

  Args:
    image: uint8 (H, W, 3).
    seed: stateless seed, int tensor of shape [2].
    num_layers: ops per image (timm `n`).
    magnitude: timm `m`, on the 0..10 scale.
    magnitude_std: timm `mstd`.
    magnitude_max: timm `mmax`, upper clip of the drawn magnitude.
    increasing: timm `inc1`: ops whose strength grows with the magnitude.
    prob: probability of applying each picked op (timm `p`).
    ops: op names to choose from; default timm's set for `increasing`.
    fill: RGB colour of the area that geometric ops uncover.
    translate_pct: translation at magnitude 10, as a fraction of the image side.

  Returns:
    The augmented uint8 image.
  """
  if image.dtype != tf.uint8:
    raise ValueError(f'randaugment works on uint8 images (before normalisation), got '
                     f'{image.dtype.name}')
  names = tuple(ops) if ops is not None else (
      RAND_INCREASING_TRANSFORMS if increasing else RAND_TRANSFORMS)
  if not names:
    raise ValueError('randaugment needs at least one op')
  unknown = [name for name in names if name not in _OPS]
  if unknown:
    raise ValueError(f'Unknown RandAugment ops {unknown}; known: {", ".join(sorted(_OPS))}')
  seed = tf.cast(seed, tf.int64)
  for layer in range(num_layers):
    layer_seed = tf.random.experimental.stateless_fold_in(seed, layer)
    choice_seed, apply_seed, sign_seed, magnitude_seed = tf.unstack(
        tf.random.experimental.stateless_split(layer_seed, 4))
    index = tf.random.stateless_uniform([], choice_seed, 0, len(names), dtype=tf.int32)
    apply = tf.random.stateless_uniform([], apply_seed) <= prob
    sign = tf.where(tf.random.stateless_uniform([], sign_seed) > 0.5, -1., 1.)
    if math.isinf(magnitude_std):
      m = tf.random.stateless_uniform([], magnitude_seed, 0., float(magnitude))
    elif magnitude_std > 0:
      m = magnitude + magnitude_std * tf.random.stateless_normal([], magnitude_seed)
    else:
      m = tf.constant(float(magnitude))
    m = tf.clip_by_value(m, 0., float(magnitude_max))

    # tf.switch_case and tf.cond build their branches right here, so the closures see this
    # layer's tensors.
    branches = [functools.partial(apply_op, name, image, m, sign, fill, translate_pct)
                for name in names]
    shape = image.shape
    image = tf.cond(apply, lambda: tf.switch_case(index, branches), lambda: image)
    image.set_shape(shape)  # The projective transform's output has a dynamic shape.
  return image


def parse_randaugment(spec: str) -> dict[str, float | int | bool]:
  """timm's config string ('rand-m9-mstd0.5-inc1', 'rand-n3-m10-p0.7') -> `randaugment` kwargs.

  Sections: m (magnitude), n (num_layers), p (prob), mstd (magnitude_std; > 100 means uniform),
  mmax (magnitude_max), inc (increasing). Defaults are timm's: m10, n2, p0.5, mstd0, inc0.
  """
  parts = spec.split('-')
  if parts[0] != 'rand':
    raise ValueError(f"RandAugment spec must start with 'rand', got {spec!r}")
  kwargs: dict[str, float | int | bool] = dict(
      num_layers=2, magnitude=_LEVEL_MAX, magnitude_std=0., increasing=False, prob=0.5)
  for part in parts[1:]:
    match = re.fullmatch(r'([a-z]+)(\d.*)', part)
    if not match:
      raise ValueError(f'Bad section {part!r} in RandAugment spec {spec!r}')
    key, value = match.groups()
    try:
      if key == 'm':
        kwargs['magnitude'] = float(value)
      elif key == 'n':
        kwargs['num_layers'] = int(value)
      elif key == 'p':
        kwargs['prob'] = float(value)
      elif key == 'mstd':
        kwargs['magnitude_std'] = math.inf if float(value) > 100 else float(value)
      elif key == 'mmax':
        kwargs['magnitude_max'] = float(value)
      elif key == 'inc':
        kwargs['increasing'] = bool(int(value))
      else:
        raise ValueError(f'unknown key {key!r}')
    except ValueError as e:
      raise ValueError(f'Bad section {part!r} in RandAugment spec {spec!r}: {e}') from e
  return kwargs


def randaugment_op(spec: str = 'rand-m9-mstd0.5-inc1', **overrides) -> Op:
  """An `op(image, seed)` for a timm RandAugment spec; `overrides` replace parsed kwargs."""
  kwargs = {**parse_randaugment(spec), **overrides}
  return lambda image, seed: randaugment(image, seed, **kwargs)


# ---------------------------------------------------------------------------------------------
# Random erasing.


def random_erasing(image: tf.Tensor, seed: tf.Tensor, *, prob: float = 0.25,
                   area: tuple[float, float] = (0.02, 1 / 3),
                   aspect: tuple[float, float] = (0.3, 1 / 0.3), mode: str = 'pixel',
                   attempts: int = 10) -> tf.Tensor:
  """timm's RandomErasing on one normalised float (H, W, C) image.

  With probability `prob`, up to `attempts` boxes are drawn (area fraction uniform in `area`,
  log aspect ratio uniform in log `aspect`, sides rounded); the first that fits strictly inside
  the image is erased at a uniform position. Fill: 'pixel' per-pixel N(0, 1) noise, 'rand' one
  N(0, 1) colour per box, 'const' zeros (all on the normalised scale, i.e. around the mean).

  Args:
    image: float (H, W, C), after mean/std normalisation.
    seed: stateless seed, int tensor of shape [2].
    prob: probability of erasing.
    area: (min, max) fraction of the image area.
    aspect: (min, max) height / width ratio of the box.
    mode: 'pixel', 'rand' or 'const'.
    attempts: tries to draw a box that fits.

  Returns:
    The image, erased or not, of the input dtype.
  """
  if not image.dtype.is_floating:
    raise ValueError(f'random_erasing works on normalised float images, got {image.dtype.name}')
  if mode not in ('pixel', 'rand', 'const'):
    raise ValueError(f"Unknown random erasing mode {mode!r}; expected 'pixel', 'rand' or 'const'")
  if not 0 < area[0] <= area[1] or not 0 < aspect[0] <= aspect[1]:
    raise ValueError(f'Bad random erasing ranges: area {area}, aspect {aspect}')
  shape = tf.shape(image)
  h, w = shape[0], shape[1]
  hf, wf = tf.cast(h, tf.float32), tf.cast(w, tf.float32)
  seeds = tf.unstack(tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 6))

  target = tf.random.stateless_uniform([attempts], seeds[0], area[0], area[1]) * hf * wf
  ratio = tf.exp(tf.random.stateless_uniform([attempts], seeds[1], math.log(aspect[0]),
                                             math.log(aspect[1])))
  box_h = tf.cast(tf.round(tf.sqrt(target * ratio)), tf.int32)
  box_w = tf.cast(tf.round(tf.sqrt(target / ratio)), tf.int32)
  fits = (box_h < h) & (box_w < w)
  first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
  box_h, box_w = box_h[first], box_w[first]
  # Positions are uniform over the (inclusive) range of valid corners, as random.randint.
  top = tf.cast(tf.floor(tf.random.stateless_uniform([], seeds[2]) *
                         tf.cast(h - box_h + 1, tf.float32)), tf.int32)
  left = tf.cast(tf.floor(tf.random.stateless_uniform([], seeds[3]) *
                          tf.cast(w - box_w + 1, tf.float32)), tf.int32)
  erase = (tf.random.stateless_uniform([], seeds[4]) <= prob) & tf.reduce_any(fits)

  rows, cols = tf.range(h)[:, None], tf.range(w)[None, :]
  inside = ((rows >= top) & (rows < top + box_h) & (cols >= left) & (cols < left + box_w)
            & erase)
  if mode == 'pixel':
    fill = tf.random.stateless_normal(shape, seeds[5])
  elif mode == 'rand':
    fill = tf.broadcast_to(tf.random.stateless_normal([1, 1, shape[2]], seeds[5]), shape)
  else:
    fill = tf.zeros(shape)
  return tf.where(inside[:, :, None], tf.cast(fill, image.dtype), image)


def random_erasing_op(**kwargs) -> Op:
  """An `op(image, seed)` of `random_erasing` with fixed keyword arguments."""
  return lambda image, seed: random_erasing(image, seed, **kwargs)
