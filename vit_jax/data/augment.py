"""Per-image augmentations of the DeiT and Swin recipes, in TensorFlow for tf.data pipelines.

- `randaugment`: RandAugment as timm implements it (`rand-m9-mstd0.5-inc1`: 2 ops per image
  drawn with replacement, each applied with probability 0.5 at a magnitude drawn from
  N(9, 0.5) clipped to [0, 10], using the 'increasing' op variants whose strength grows with the
  magnitude). Works on uint8 RGB images before normalisation.
- `random_erasing`: timm's RandomErasing (one box, up to 10 tries to fit it, 'pixel' mode fills
  with per-pixel standard normal noise). Works on the normalised float image.

Every op is `op(image, seed)` with a stateless TF seed (int tensor of shape [2]), like the ops of
`vit_jax.data.preprocess`, so the same seed always gives the same image. TensorFlow is imported here
and nowhere in the model code.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Callable, Sequence

import tensorflow as tf

from vit_jax.data import image_io
from vit_jax.data import pil_ops

Op = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]

# timm fills the area uncovered by geometric ops with the ImageNet mean, as uint8: (124, 116, 104).
IMAGENET_FILL = tuple(round(255 * m) for m in image_io.IMAGENET_MEAN)
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
# RandAugment.


def _enhance_increasing(level: tf.Tensor, sign: tf.Tensor) -> tf.Tensor:
  """timm's 'increasing' enhancement factor: 1 (identity) moving away by up to 0.9."""
  return tf.maximum(0.1, 1. + sign * level * 0.9)


# name -> fn(image, level, sign, fill, translate_pct), level = magnitude / 10 in [0, 1] (or
# above with magnitude_max > 10), sign = +-1 the random negation; timm's level-to-argument maps.
_OPS = {
    'AutoContrast': lambda x, l, s, fill, t: pil_ops.auto_contrast(x),
    'Equalize': lambda x, l, s, fill, t: pil_ops.equalize(x),
    'Invert': lambda x, l, s, fill, t: pil_ops.invert(x),
    'Rotate': lambda x, l, s, fill, t: pil_ops.rotate(x, s * l * 30., fill),
    'Posterize': lambda x, l, s, fill, t: pil_ops.posterize(x, tf.floor(l * 4.)),
    'PosterizeIncreasing': lambda x, l, s, fill, t: pil_ops.posterize(x, 4. - tf.floor(l * 4.)),
    'Solarize': lambda x, l, s, fill, t: pil_ops.solarize(x, tf.minimum(256., tf.floor(l * 256.))),
    'SolarizeIncreasing':
        lambda x, l, s, fill, t: pil_ops.solarize(x, 256. - tf.minimum(256., tf.floor(l * 256.))),
    'SolarizeAdd':
        lambda x, l, s, fill, t: pil_ops.solarize_add(x, tf.minimum(128., tf.floor(l * 110.))),
    'Color': lambda x, l, s, fill, t: pil_ops.color(x, l * 1.8 + 0.1),
    'ColorIncreasing': lambda x, l, s, fill, t: pil_ops.color(x, _enhance_increasing(l, s)),
    'Contrast': lambda x, l, s, fill, t: pil_ops.contrast(x, l * 1.8 + 0.1),
    'ContrastIncreasing': lambda x, l, s, fill, t: pil_ops.contrast(x, _enhance_increasing(l, s)),
    'Brightness': lambda x, l, s, fill, t: pil_ops.brightness(x, l * 1.8 + 0.1),
    'BrightnessIncreasing':
        lambda x, l, s, fill, t: pil_ops.brightness(x, _enhance_increasing(l, s)),
    'Sharpness': lambda x, l, s, fill, t: pil_ops.sharpness(x, l * 1.8 + 0.1),
    'SharpnessIncreasing': lambda x, l, s, fill, t: pil_ops.sharpness(x, _enhance_increasing(l, s)),
    'ShearX': lambda x, l, s, fill, t: pil_ops.shear_x(x, s * l * 0.3, fill),
    'ShearY': lambda x, l, s, fill, t: pil_ops.shear_y(x, s * l * 0.3, fill),
    'TranslateXRel': lambda x, l, s, fill, t: pil_ops.translate_x_rel(x, s * l * t, fill),
    'TranslateYRel': lambda x, l, s, fill, t: pil_ops.translate_y_rel(x, s * l * t, fill),
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
