"""Preprocessing ops against their references: timm's RandomResizedCrop sampler, big_vision's
area resize_small (tf.image.resize), timm's PIL bicubic eval resize."""

import math
import random

import numpy as np
import pytest
import tensorflow as tf

from helpers import load_config
from vit_jax.data import preprocess

H, W = 375, 500  # A typical ImageNet photo.


def _photo(h=H, w=W, seed=0):
  """A photo-like uint8 image: smooth colour fields, sharp edges and fine texture."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[:h, :w] / max(h, w)
  image = 120 + 80 * np.sin(7 * x[..., None] + np.array([0, 1, 2])) * np.cos(5 * y[..., None])
  image[h // 3:h // 2, w // 4:w // 2] = (230, 20, 40)
  image += rng.normal(0, 12, size=image.shape)
  return np.clip(np.round(image), 0, 255).astype(np.uint8)


def _timm_get_params(rng, img_h, img_w, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
  """timm's RandomResizedCropAndInterpolation.get_params, transcribed: (top, left, h, w)."""
  area = img_h * img_w
  for _ in range(10):
    target_area = rng.uniform(*scale) * area
    aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if w <= img_w and h <= img_h:
      return rng.randint(0, img_h - h), rng.randint(0, img_w - w), h, w
  in_ratio = img_w / img_h
  if in_ratio < min(ratio):
    w, h = img_w, int(round(img_w / min(ratio)))
  elif in_ratio > max(ratio):
    h, w = img_h, int(round(img_h * max(ratio)))
  else:
    h, w = img_h, img_w
  return (img_h - h) // 2, (img_w - w) // 2, h, w


def _our_crops(img_h, img_w, n, **kwargs):
  """(top, left, h, w) of `n` draws of our op, read off an image of pixel coordinates."""
  rows, cols = np.mgrid[:img_h, :img_w]
  coords = tf.constant(np.stack([rows, cols, np.zeros_like(rows)], -1), tf.int32)
  # Resizing with 'nearest' to the image's own size keeps the crop's corner coordinates.
  op = preprocess.random_resized_crop(size=(img_h, img_w), method='nearest', antialias=False,
                                      **kwargs)
  corners = tf.function(lambda seed: tf.concat([op(coords, seed)[0, 0, :2],
                                                 op(coords, seed)[-1, -1, :2]], 0))
  out = []
  for i in range(n):
    top, left, bottom, right = corners(tf.constant([7, i])).numpy()
    out.append((top, left, bottom - top + 1, right - left + 1))
  return np.array(out)


def _stats(crops, img_h, img_w):
  area = crops[:, 2] * crops[:, 3] / (img_h * img_w)
  log_aspect = np.log(crops[:, 3] / crops[:, 2])
  return area, log_aspect


def test_random_resized_crop_draws_timms_distribution():
  n = 2000
  ours = _our_crops(H, W, n)
  reference = np.array([_timm_get_params(random.Random(i), H, W) for i in range(20_000)])
  area, log_aspect = _stats(ours, H, W)
  ref_area, ref_log_aspect = _stats(reference, H, W)
  # timm on 500x375: mean area 0.431, median 0.420, 25% below a quarter (TF's sampler: 0.369,
  # 0.330, 37%); standard errors at n = 2000 are about 0.006.
  assert abs(area.mean() - ref_area.mean()) < 0.02 and abs(ref_area.mean() - 0.431) < 0.01
  assert abs(np.median(area) - np.median(ref_area)) < 0.03
  assert abs((area < .25).mean() - (ref_area < .25).mean()) < 0.03
  assert area.min() >= 0.079 and area.max() <= 1.
  assert np.abs(log_aspect).max() <= math.log(4 / 3) + 0.02
  assert abs(log_aspect.mean() - ref_log_aspect.mean()) < 0.02
  assert abs(log_aspect.std() - ref_log_aspect.std()) < 0.01
  # Offsets uniform over the free range: the crop's centre averages the image's.
  assert abs((ours[:, 0] + ours[:, 2] / 2).mean() / H - .5) < 0.02
  assert abs((ours[:, 1] + ours[:, 3] / 2).mean() / W - .5) < 0.02
  scipy_stats = pytest.importorskip('scipy.stats')
  assert scipy_stats.ks_2samp(area, ref_area).pvalue > 1e-3
  assert scipy_stats.ks_2samp(log_aspect, ref_log_aspect).pvalue > 1e-3


def test_random_resized_crop_falls_back_to_timms_central_crop():
  for img_h, img_w in ((10, 1000), (1000, 10)):  # No try fits: centre crop of ratio 4/3 or 3/4.
    expected = _timm_get_params(random.Random(0), img_h, img_w)
    assert (_our_crops(img_h, img_w, 3) == expected).all()


def test_random_resized_crop_equals_timms_get_params(timm):
  timm_transforms = timm.data.transforms
  pil_image = pytest.importorskip('PIL.Image').new('RGB', (W, H))
  draws = []
  for i in range(2000):
    random.seed(i)
    draws.append(timm_transforms.RandomResizedCropAndInterpolation.get_params(
        pil_image, (0.08, 1.0), (3 / 4, 4 / 3)))
  theirs = np.array(draws)
  ours = _our_crops(H, W, 2000)
  scipy_stats = pytest.importorskip('scipy.stats')
  for a, b in zip(_stats(ours, H, W), _stats(theirs, H, W)):
    assert scipy_stats.ks_2samp(a, b).pvalue > 1e-3
  # The same sampler as the transcription above, draw for draw.
  assert (theirs[:50] == [_timm_get_params(random.Random(i), H, W) for i in range(50)]).all()


def test_random_resized_crop_is_seeded_and_resizes_bicubically():
  image = tf.constant(_photo())
  op = preprocess.random_resized_crop(size=224)
  a, b = op(image, tf.constant([1, 2])), op(image, tf.constant([1, 2]))
  assert a.shape == (224, 224, 3) and a.dtype == tf.uint8
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, op(image, tf.constant([1, 3])))


def test_resize_small_area_is_big_visions():
  image = tf.constant(_photo())
  ours = preprocess.resize_small(256, method='area')(image, tf.constant([0, 0]))
  # big_vision's resize_small(256): area resize of the image to the smaller side 256.
  theirs = tf.image.resize(image, (256, 341), method='area')
  assert ours.shape == (256, 341, 3)
  np.testing.assert_array_equal(ours, np.clip(np.round(theirs), 0, 255).astype(np.uint8))
  bilinear = preprocess.resize_small(256)(image, tf.constant([0, 0]))
  assert np.abs(bilinear.numpy().astype(float) - ours.numpy()).mean() > 1  # Not the old op.


def test_resize_small_bicubic_antialiased_is_pils_bicubic():
  pil = pytest.importorskip('PIL.Image')
  image = _photo()
  ours = preprocess.resize_small(256, method='bicubic', antialias=True)(
      tf.constant(image), tf.constant([0, 0])).numpy().astype(float)
  # torchvision's Resize(256) with PIL bicubic, as timm's eval transform for DeiT and Swin.
  theirs = np.asarray(pil.fromarray(image).resize((341, 256), pil.BICUBIC), float)
  assert ours.shape == theirs.shape
  assert np.abs(ours - theirs).mean() < 0.3 and np.abs(ours - theirs).max() <= 3


@pytest.mark.parametrize('config,arg', [('deit.py', 'ViT-B_16'), ('swin.py', 'Swin-T')])
def test_timm_recipes_crop_and_resize_as_timm(config, arg):
  config = load_config(config, arg)
  assert config.pp_train.startswith('random_resized_crop|')
  assert config.pp_eval.startswith('resize_small(256, method="bicubic", antialias=True)|')


def test_bv_preset_evaluates_with_big_visions_area_resize():
  config = load_config('pretrain.py', 'ViT-S_16,imagenet2012,bv')
  assert config.pp_eval.startswith('resize_small(256, method="area")|')
  assert config.pp_train.startswith('inception_crop|')  # big_vision's TF sampler, kept.


def test_ops_that_take_the_image_size_are_declared():
  import inspect  # pylint: disable=g-import-not-at-top
  for name, factory in preprocess._OPS.items():  # pylint: disable=protected-access
    takes = 'size' in inspect.signature(factory).parameters
    assert takes == (name in preprocess.SIZED_OPS), name


def test_a_local_variable_named_size_is_not_a_size_parameter():
  @preprocess.register('test_local_size')
  def op_factory(scale: float = 2.):
    size = scale  # A local (not captured), not a parameter: no size may be passed in.
    factor = size
    return lambda image, seed: image * factor
  try:
    ops = preprocess.parse('test_local_size|resize', 8)
    image = tf.ones((4, 4, 3), tf.float32)
    out = preprocess.apply(ops, image, tf.constant([0, 0], tf.int32))
    assert out.shape == (8, 8, 3)
  finally:
    del preprocess._OPS['test_local_size']  # pylint: disable=protected-access
