"""Per-example preprocessing ops, selected by config strings such as
`'inception_crop|flip_lr|value_range(-1, 1)'` (big_vision style).

Every op is `op(image, seed) -> image` on one example, with `seed` a stateless TF seed (shape [2]).
All randomness is stateless and derived from (run seed, global example index), so the data stream
is a pure function of the step: a resumed run sees exactly the batches the killed run would have.
Ops register by name with `@register`.
"""

from __future__ import annotations

import ast
import inspect
import math
from typing import Callable

import tensorflow as tf

from vit_jax.data import augment
from vit_jax.data import image_io

Op = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]
_OPS: dict[str, Callable[..., Op]] = {}
# Ops whose `size` parameter defaults to the config's image size when a spec leaves it out.
SIZED_OPS: set[str] = set()


def register(name: str, *, takes_size: bool = False
             ) -> Callable[[Callable[..., Op]], Callable[..., Op]]:
  """Registers an op factory under `name` (the name used in config strings).

  `takes_size`: the factory's `size` parameter is the output size, which `parse` fills in with
  the image size when the spec does not give it.
  """
  def wrap(factory):
    if name in _OPS:
      raise ValueError(f'Preprocessing op {name!r} is registered twice')
    _OPS[name] = factory
    if takes_size:
      SIZED_OPS.add(name)
    return factory
  return wrap


def _calls(spec: str) -> list[tuple[str, str, list, dict]]:
  """`'a|b(1, 2)|c(k=3)'` as (text, name, args, kwargs) per op, names checked."""
  calls = []
  for part in (p.strip() for p in spec.split('|') if p.strip()):
    try:
      call = ast.parse(part, mode='eval').body
      if isinstance(call, ast.Name):
        name, args, kwargs = call.id, [], {}
      elif isinstance(call, ast.Call) and isinstance(call.func, ast.Name):
        name = call.func.id
        args = [ast.literal_eval(a) for a in call.args]
        kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
      else:
        raise ValueError('not a name or a call')
    except (SyntaxError, ValueError) as e:
      raise ValueError(f'Bad preprocessing op {part!r} in {spec!r}: {e}') from e
    if name not in _OPS:
      raise ValueError(f'Unknown preprocessing op {name!r} in {spec!r}; known ops: '
                       f'{", ".join(sorted(_OPS))}')
    calls.append((part, name, args, kwargs))
  return calls


def parse(spec: str, image_size: int | tuple[int, int]) -> list[Op]:
  """Parses `'a|b(1, 2)|c(k=3)'` into ops; ops that take a size default to `image_size`."""
  ops = []
  for _, name, args, kwargs in _calls(spec):
    factory = _OPS[name]
    if name in SIZED_OPS and not args and 'size' not in kwargs:
      kwargs['size'] = image_size
    ops.append(factory(*args, **kwargs))
  return ops


def pixel_normalization(spec: str) -> image_io.Normalization:
  """How the ops of `spec` scale pixels, as `image_io.normalize` takes it.

  The last `value_range` or `normalize` op decides; without one the model sees raw 0..255
  values. This is what an exported model records, so that tools feed it as it was trained.
  """
  mean, std = (0., 0., 0.), (1 / 255,) * 3
  for _, name, args, kwargs in _calls(spec):
    if name == 'value_range':
      bound = inspect.signature(value_range).bind(*args, **kwargs)
      bound.apply_defaults()
      vmin, vmax = bound.arguments['vmin'], bound.arguments['vmax']
      mean, std = (-vmin / (vmax - vmin),) * 3, (1 / (vmax - vmin),) * 3
    elif name == 'normalize':
      bound = inspect.signature(normalize).bind(*args, **kwargs)
      bound.apply_defaults()
      mean, std = image_io.mean_std(bound.arguments['stats'])
  return image_io.normalization_name(mean, std)


def normalization_spec(normalization: image_io.Normalization) -> str:
  """The op that feeds a model trained with `normalization` (`pixel_normalization`'s inverse)."""
  if isinstance(normalization, str) and normalization in image_io.VALUE_RANGES:
    vmin, vmax = image_io.VALUE_RANGES[normalization]
    return f'value_range({vmin:g}, {vmax:g})'
  if isinstance(normalization, str):
    return f'normalize("{normalization}")'
  mean, std = normalization
  return f'normalize(({tuple(map(float, mean))}, {tuple(map(float, std))}))'


def apply(ops: list[Op], image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Applies `ops` in order, each with its own seed folded from `seed`."""
  for i, op in enumerate(ops):
    image = op(image, tf.random.experimental.stateless_fold_in(seed, i))
  return image


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
  return (size, size) if isinstance(size, int) else tuple(size)


def resize_image(image: tf.Tensor, size: tuple[int, int], method: str = 'bilinear',
                 antialias: bool = False) -> tf.Tensor:
  """`tf.image.resize` to `size` (uint8 stays uint8, clipped and rounded; float stays float).

  `method` and `antialias` are tf.image.resize's: 'area' is big_vision's resize_small default;
  'bicubic' with antialias=True is PIL's bicubic (Keys a = -0.5, kernel widened when shrinking),
  which timm's transforms run.
  """
  dtype = image.dtype
  image = tf.image.resize(image, size, method=method, antialias=antialias)
  return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), dtype) if dtype == tf.uint8 else image


@register('resize', takes_size=True)
def resize(size: int | tuple[int, int] = 224) -> Op:
  """Resizes to `size` ignoring the aspect ratio (the original library's eval)."""
  return lambda image, seed: resize_image(image, _hw(size))


@register('resize_small')
def resize_small(smaller_side: int, method: str = 'bilinear', antialias: bool = False) -> Op:
  """Resizes so that the smaller side is `smaller_side`, keeping the aspect ratio.

  The longer side is rounded, as big_vision does (torchvision's Resize truncates it: at most one
  pixel apart, half a pixel after a central crop). big_vision's own op defaults to
  method='area'; timm's eval (DeiT, Swin) is PIL bicubic: method='bicubic', antialias=True.
  """
  def op(image, seed):
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    ratio = tf.cast(smaller_side, tf.float32) / tf.cast(tf.minimum(h, w), tf.float32)
    new_h = tf.cast(tf.round(tf.cast(h, tf.float32) * ratio), tf.int32)
    new_w = tf.cast(tf.round(tf.cast(w, tf.float32) * ratio), tf.int32)
    return resize_image(image, (new_h, new_w), method, antialias)
  return op


@register('central_crop', takes_size=True)
def central_crop(size: int | tuple[int, int] = 224) -> Op:
  def op(image, seed):
    h, w = _hw(size)
    top = (tf.shape(image)[0] - h) // 2
    left = (tf.shape(image)[1] - w) // 2
    return tf.image.crop_to_bounding_box(image, top, left, h, w)
  return op


@register('inception_crop', takes_size=True)
def inception_crop(size: int | tuple[int, int] = 224, area_min: float = 5,
                   area_max: float = 100) -> Op:
  """Random crop of 5%-100% of the area (aspect 3/4-4/3), resized to `size`."""
  def op(image, seed):
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), tf.zeros([0, 0, 4], tf.float32), seed=seed,
        area_range=(area_min / 100, area_max / 100), min_object_covered=0,
        use_image_if_no_bounding_boxes=True)
    return resize_image(tf.slice(image, begin, crop_size), _hw(size))
  return op


@register('random_resized_crop', takes_size=True)
def random_resized_crop(size: int | tuple[int, int] = 224,
                        scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3), method: str = 'bicubic',
                        antialias: bool = True) -> Op:
  """timm's RandomResizedCrop (DeiT, Swin): its crop sampler, then a bicubic resize to `size`.

  As timm's `get_params`: up to 10 tries of an area uniform in `scale` times the image's and a
  log aspect ratio uniform in log `ratio`, sides rounded; the first that fits is placed uniformly,
  and if none fits, the central crop of the largest region within `ratio`. The tries are drawn at
  once from the stateless seed. (TF's `inception_crop` draws differently: smaller crops.)
  """
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  def op(image, seed):
    seeds = tf.random.experimental.stateless_split(seed, 4)
    img_h, img_w = tf.shape(image)[0], tf.shape(image)[1]
    area = tf.cast(img_h * img_w, tf.float32)
    target_area = tf.random.stateless_uniform([10], seeds[0], scale[0], scale[1]) * area
    aspect = tf.exp(tf.random.stateless_uniform([10], seeds[1], log_ratio[0], log_ratio[1]))
    # tf.round, like Python's round, rounds halves to even.
    tries_w = tf.cast(tf.round(tf.sqrt(target_area * aspect)), tf.int32)
    tries_h = tf.cast(tf.round(tf.sqrt(target_area / aspect)), tf.int32)
    fits = (tries_w <= img_w) & (tries_h <= img_h)
    first = tf.argmax(tf.cast(fits, tf.int32))
    in_ratio = tf.cast(img_w, tf.float32) / tf.cast(img_h, tf.float32)
    fallback_w = tf.where(in_ratio > max(ratio), tf.cast(
        tf.round(tf.cast(img_h, tf.float32) * max(ratio)), tf.int32), img_w)
    fallback_h = tf.where(in_ratio < min(ratio), tf.cast(
        tf.round(tf.cast(img_w, tf.float32) / min(ratio)), tf.int32), img_h)
    found = tf.reduce_any(fits)
    crop_w = tf.where(found, tries_w[first], fallback_w)
    crop_h = tf.where(found, tries_h[first], fallback_h)
    top = tf.where(found, tf.random.stateless_uniform(
        [], seeds[2], 0, img_h - crop_h + 1, tf.int32), (img_h - crop_h) // 2)
    left = tf.where(found, tf.random.stateless_uniform(
        [], seeds[3], 0, img_w - crop_w + 1, tf.int32), (img_w - crop_w) // 2)
    crop = tf.image.crop_to_bounding_box(image, top, left, crop_h, crop_w)
    return resize_image(crop, _hw(size), method, antialias)
  return op


@register('random_crop', takes_size=True)
def random_crop(size: int | tuple[int, int] = 32, pad: int = 4) -> Op:
  """Zero-pads by `pad` on each side and takes a random `size` crop (the CIFAR recipe)."""
  def op(image, seed):
    h, w = _hw(size)
    image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    return tf.image.stateless_random_crop(image, (h, w, tf.shape(image)[-1]), seed=seed)
  return op


@register('flip_lr')
def flip_lr() -> Op:
  return lambda image, seed: tf.image.stateless_random_flip_left_right(image, seed)


@register('value_range')
def value_range(vmin: float = -1, vmax: float = 1) -> Op:
  """Maps uint8 pixels [0, 255] linearly to [vmin, vmax] (float32)."""
  def op(image, seed):
    return tf.cast(image, tf.float32) / 255. * (vmax - vmin) + vmin
  return op


@register('normalize')
def normalize(stats: str | tuple[tuple[float, ...], tuple[float, ...]] = 'imagenet') -> Op:
  """(pixel/255 - mean) / std, with `stats` a name of `image_io.MEAN_STD` or (mean, std)."""
  mean, std = (tf.constant(v, tf.float32) for v in image_io.mean_std(stats))
  return lambda image, seed: (tf.cast(image, tf.float32) / 255. - mean) / std


@register('randaug')
def randaug(spec: str = 'rand-m9-mstd0.5-inc1') -> Op:
  """timm's RandAugment from its config string, on uint8 images (`augment.randaugment`)."""
  return augment.randaugment_op(spec)


@register('random_erasing')
def random_erasing(prob: float = 0.25, mode: str = 'pixel') -> Op:
  """timm's RandomErasing; goes after `normalize` (it fills with N(0, 1) noise)."""
  return augment.random_erasing_op(prob=prob, mode=mode)
