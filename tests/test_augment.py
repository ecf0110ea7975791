"""RandAugment and random erasing (TensorFlow, per image) and mixup/cutmix (JAX, per batch)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from helpers import config_module
from vit_jax.data import augment
from vit_jax.training import mixup

IDENTITY_AT_ZERO = ('Rotate', 'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel',
                    'SolarizeIncreasing', 'SolarizeAdd', 'ColorIncreasing', 'ContrastIncreasing',
                    'BrightnessIncreasing', 'SharpnessIncreasing')


def sample_image(h=24, w=40, seed=0):
  """A uint8 image with a low-contrast background and a full-range patch."""
  rng = np.random.default_rng(seed)
  image = rng.integers(40, 220, (h, w, 3)).astype(np.uint8)
  patch = image[h // 4:h // 4 + h // 2, w // 4:w // 4 + w // 2]
  patch[:] = rng.integers(0, 256, patch.shape)
  return image


# ---------------------------------------------------------------------------------------------
# RandAugment.


def test_parse_randaugment_spec():
  assert augment.parse_randaugment('rand-m9-mstd0.5-inc1') == dict(
      num_layers=2, magnitude=9., magnitude_std=0.5, increasing=True, prob=0.5)
  parsed = augment.parse_randaugment('rand-n3-m10-p0.7-mstd101-mmax12')
  assert parsed['num_layers'] == 3 and parsed['prob'] == 0.7
  assert parsed['magnitude_std'] == float('inf') and parsed['magnitude_max'] == 12.
  with pytest.raises(ValueError, match='must start with'):
    augment.parse_randaugment('auto-m9')
  with pytest.raises(ValueError, match='Bad section'):
    augment.parse_randaugment('rand-q3')


def test_randaugment_shapes_dtype_and_determinism():
  image = tf.constant(sample_image())
  op = tf.function(augment.randaugment_op('rand-m9-mstd0.5-inc1'))
  outputs = [op(image, tf.constant([7, s], tf.int64)).numpy() for s in range(8)]
  assert all(o.dtype == np.uint8 and o.shape == image.shape for o in outputs)
  np.testing.assert_array_equal(op(image, tf.constant([7, 3], tf.int64)), outputs[3])
  assert len({o.tobytes() for o in outputs}) > 4  # Different seeds, different images.
  assert any(not np.array_equal(o, image) for o in outputs)
  with pytest.raises(ValueError, match='uint8'):
    augment.randaugment(tf.zeros((4, 4, 3)), tf.constant([0, 0]))
  with pytest.raises(ValueError, match='Unknown RandAugment ops'):
    augment.randaugment(image, tf.constant([0, 0]), ops=['Cutout'])


def test_magnitude_zero_identity_ops_keep_the_image():
  image = tf.constant(sample_image())
  for seed in range(6):
    out = augment.randaugment(image, tf.constant([seed, 1]), num_layers=4, magnitude=0.,
                              magnitude_std=0., prob=1., ops=IDENTITY_AT_ZERO)
    np.testing.assert_array_equal(out, image)


def test_op_probability():
  image = tf.constant(sample_image(4, 4))
  inverted = 0
  for seed in range(200):
    out = augment.randaugment(image, tf.constant([seed, 2]), num_layers=1, prob=0.5,
                              ops=['Invert'])
    inverted += not np.array_equal(out, image)
  assert 70 <= inverted <= 130  # Binomial(200, 0.5): mean 100, std 7.
  never = augment.randaugment(image, tf.constant([0, 0]), prob=0., ops=['Invert'])
  np.testing.assert_array_equal(never, image)


def _timm_cases(aa, fill):
  """(our op, magnitude, sign, timm's PIL call) at magnitude 9: timm's level-to-arg by hand."""
  kw = dict(fillcolor=fill, resample=2)  # PIL bilinear: TF has no bicubic projective transform.
  return [
      ('AutoContrast', 9, 1, lambda im: aa.auto_contrast(im)),
      ('Equalize', 9, 1, lambda im: aa.equalize(im)),
      ('Invert', 9, 1, lambda im: aa.invert(im)),
      ('Posterize', 9, 1, lambda im: aa.posterize(im, 3)),
      ('PosterizeIncreasing', 9, 1, lambda im: aa.posterize(im, 1)),
      ('Solarize', 9, 1, lambda im: aa.solarize(im, 230)),
      ('SolarizeIncreasing', 9, 1, lambda im: aa.solarize(im, 26)),
      ('SolarizeAdd', 9, 1, lambda im: aa.solarize_add(im, 99)),
      ('ColorIncreasing', 9, 1, lambda im: aa.color(im, 1.81)),
      ('ContrastIncreasing', 9, -1, lambda im: aa.contrast(im, 0.19)),
      ('BrightnessIncreasing', 9, 1, lambda im: aa.brightness(im, 1.81)),
      ('SharpnessIncreasing', 9, 1, lambda im: aa.sharpness(im, 1.81)),
      ('Color', 9, 1, lambda im: aa.color(im, 1.72)),
      ('Rotate', 9, 1, lambda im: aa.rotate(im, 27., **kw)),
      ('Rotate', 9, -1, lambda im: aa.rotate(im, -27., **kw)),
      ('ShearX', 9, 1, lambda im: aa.shear_x(im, 0.27, **kw)),
      ('ShearY', 9, -1, lambda im: aa.shear_y(im, -0.27, **kw)),
      ('TranslateXRel', 9, 1, lambda im: aa.translate_x_rel(im, 0.405, **kw)),
      ('TranslateYRel', 9, -1, lambda im: aa.translate_y_rel(im, -0.405, **kw)),
  ]


def test_ops_match_timm_pil(timm):
  """Each op against timm's own PIL implementation, up to rounding (1 level of 255)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from timm.data import auto_augment as aa  # pylint: disable=g-import-not-at-top
  image = sample_image()
  for name, magnitude, sign, reference in _timm_cases(aa, augment.IMAGENET_FILL):
    expected = np.asarray(reference(Image.fromarray(image))).astype(int)
    ours = augment.apply_op(name, tf.constant(image), magnitude, sign).numpy().astype(int)
    assert np.abs(ours - expected).max() <= 1, name
    assert not np.array_equal(ours, image), name


# ---------------------------------------------------------------------------------------------
# Random erasing.


def test_random_erasing_box_and_fill():
  image = tf.fill((32, 48, 3), 0.5)
  areas = []
  for seed in range(20):
    out = augment.random_erasing(image, tf.constant([seed, 0]), prob=1.).numpy()
    erased = np.any(out != 0.5, axis=-1)
    rows, cols = np.nonzero(erased)
    assert rows.size, seed  # A box always fits for these ranges.
    box = erased[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    assert box.all(), seed  # One solid rectangle (noise never hits 0.5 exactly).
    areas.append(box.size / erased.size)
    noise = out[erased]
    if noise.size > 300:  # 'pixel' mode: standard normal values.
      assert abs(noise.mean()) < 0.2 and 0.8 < noise.std() < 1.2
  assert min(areas) >= 0.01 and max(areas) <= 0.36  # area (0.02, 1/3), with rounded sides.
  np.testing.assert_array_equal(augment.random_erasing(image, tf.constant([3, 0]), prob=1.),
                                augment.random_erasing(image, tf.constant([3, 0]), prob=1.))


def test_random_erasing_probability_and_modes():
  image = tf.fill((16, 16, 3), 0.5)
  erased = sum(not np.array_equal(augment.random_erasing(image, tf.constant([s, 1])), image)
               for s in range(200))
  assert 25 <= erased <= 75  # prob 0.25: mean 50, std 6.
  const = augment.random_erasing(image, tf.constant([0, 1]), prob=1., mode='const').numpy()
  assert set(np.unique(const)) == {0., 0.5}
  rand = augment.random_erasing(image, tf.constant([0, 1]), prob=1., mode='rand').numpy()
  box = rand[np.any(rand != 0.5, axis=-1)]
  assert (box == box[0]).all()  # One colour per box.
  with pytest.raises(ValueError, match='normalised float'):
    augment.random_erasing(tf.zeros((4, 4, 3), tf.uint8), tf.constant([0, 0]))
  with pytest.raises(ValueError, match='mode'):
    augment.random_erasing(image, tf.constant([0, 0]), mode='noise')


# ---------------------------------------------------------------------------------------------
# Mixup / cutmix.


def _batch(b=8, h=16, w=24):
  """Image i is constant i, so a mixed pixel tells where it came from."""
  images = jnp.broadcast_to(jnp.arange(b, dtype=jnp.float32)[:, None, None, None], (b, h, w, 3))
  return images, jnp.arange(b) % 5


def test_mixup_images_and_targets():
  images, labels = _batch()
  mixed, targets = mixup.mix(jax.random.key(0), images, labels, mixup_alpha=0.8,
                             cutmix_alpha=0., num_classes=5)
  assert mixed.shape == images.shape and mixed.dtype == jnp.float32
  assert targets.shape == (8, 5) and targets.dtype == jnp.float32
  np.testing.assert_allclose(targets.sum(-1), 1., atol=1e-6)
  # Image 0 is lam * 0 + (1 - lam) * 7.
  lam = 1. - float(mixed[0, 0, 0, 0]) / 7.
  np.testing.assert_allclose(mixed[:, 0, 0, 0], lam * images[:, 0, 0, 0] +
                             (1 - lam) * images[::-1, 0, 0, 0], atol=1e-5)
  np.testing.assert_allclose(targets[0, labels[0]], lam, atol=1e-5)
  np.testing.assert_allclose(targets[0, labels[7]], 1. - lam, atol=1e-5)
  assert 0. < lam < 1.


def test_cutmix_targets_equal_the_pasted_area():
  images, labels = _batch()
  for seed in range(10):
    mixed, targets = mixup.mix(jax.random.key(seed), images, labels, mixup_alpha=0.,
                               cutmix_alpha=1., num_classes=5)
    from_other = np.mean(np.asarray(mixed[0, :, :, 0]) == 7.)
    np.testing.assert_allclose(targets[0, labels[7]], from_other, atol=1e-6)
    np.testing.assert_allclose(targets[0, labels[0]], 1. - from_other, atol=1e-6)
    np.testing.assert_allclose(targets.sum(-1), 1., atol=1e-6)
    # The pasted region is one rectangle, the same in every image.
    rows, cols = np.nonzero(np.asarray(mixed[0, :, :, 0]) == 7.)
    if rows.size:
      assert rows.size == (np.ptp(rows) + 1) * (np.ptp(cols) + 1)
      np.testing.assert_array_equal(mixed[3, :, :, 0] == 4., mixed[0, :, :, 0] == 7.)


def test_switch_probability_label_smoothing_and_determinism():
  images, labels = _batch()
  mix = jax.jit(lambda rng: mixup.mix(rng, images, labels, num_classes=5, label_smoothing=0.1))
  out_a, out_b = mix(jax.random.key(3)), mix(jax.random.key(3))
  jax.tree.map(np.testing.assert_array_equal, out_a, out_b)

  # Mixup blends every pixel; cutmix copies pixels, so its images stay integer-valued.
  batch_mix = jax.jit(jax.vmap(lambda rng: mixup.mix(rng, images, labels, num_classes=5)[0]))
  outputs = batch_mix(jax.random.split(jax.random.key(0), 200))
  cutmix = np.all(np.asarray(outputs) == np.round(np.asarray(outputs)), axis=(1, 2, 3, 4))
  assert 70 <= cutmix.sum() <= 130  # switch_prob 0.5.

  # No mixing (prob 0): targets are the smoothed one-hot labels (on 1 - s + s / K, off s / K).
  same, targets = mixup.mix(jax.random.key(0), images, labels, prob=0., label_smoothing=0.1,
                            num_classes=5)
  np.testing.assert_array_equal(same, images)
  expected = np.full((8, 5), 0.02)
  expected[np.arange(8), labels] = 0.92
  np.testing.assert_allclose(targets, expected, atol=1e-6)
  # One-hot labels give the same targets as integer labels.
  one_hot = jax.nn.one_hot(labels, 5)
  np.testing.assert_allclose(mix(jax.random.key(3))[1], mixup.mix(
      jax.random.key(3), images, one_hot, label_smoothing=0.1)[1], atol=1e-6)


def test_mix_input_checks_and_integer_images():
  images, labels = _batch()
  mixed, _ = mixup.mix(jax.random.key(0), images.astype(jnp.uint8), labels, num_classes=5)
  assert mixed.dtype == jnp.float32
  with pytest.raises(ValueError, match='num_classes'):
    mixup.mix(jax.random.key(0), images, labels)
  with pytest.raises(ValueError, match='images but'):
    mixup.mix(jax.random.key(0), images, labels[:3], num_classes=5)
  with pytest.raises(ValueError, match='Bad mixup settings'):
    mixup.mix(jax.random.key(0), images, labels, num_classes=5, switch_prob=2.)


# ---------------------------------------------------------------------------------------------
# The Swin recipe's wiring: preprocessing strings and the train step's mixup hook.


def test_swin_config_pipeline_and_mixup():
  from vit_jax.data import preprocess  # pylint: disable=g-import-not-at-top
  module = config_module('swin.py')
  imagenet = module.get_config('Swin-T')
  assert 'randaug(' in imagenet.pp_train and 'random_erasing(' in imagenet.pp_train
  assert len(preprocess.parse(imagenet.pp_train, 224)) == 5

  config = module.get_config('cifar10')  # The same ops, run at CIFAR size (fast).
  ops = preprocess.parse(config.pp_train, 32)
  run = tf.function(lambda image, seed: preprocess.apply(ops, image, seed))
  image = tf.constant(sample_image(32, 32))
  out = run(image, tf.constant([0, 1], tf.int64))
  assert out.dtype == tf.float32 and out.shape == (32, 32, 3)
  np.testing.assert_array_equal(out, run(image, tf.constant([0, 1], tf.int64)))
  # train.py calls mixup.mix(rng, images, smoothed targets, **config.mixup).
  images, targets = jax.jit(lambda rng, x, y: mixup.mix(rng, x, y, **config.mixup))(
      jax.random.key(0), jnp.zeros((4, 32, 32, 3)), jax.nn.one_hot(jnp.arange(4), 10))
  assert images.shape == (4, 32, 32, 3)
  np.testing.assert_allclose(targets.sum(-1), 1., atol=1e-6)
  with pytest.raises(ValueError, match='Unknown argument'):
    module.get_config('Swin-X')
