"""`python -m vit_jax.tools.classify`: images in, top-5 with label names out; image reading; labels."""

import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from vit_jax import checkpoint
from vit_jax import models
from vit_jax.data import image_io
from vit_jax.data import labels
from vit_jax.models import loader
from vit_jax.tools import classify

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 32


@functools.cache
def tiny_params(num_classes=10):
  """A random ViT (patch 8, width 32, 2 layers) whose head has `num_classes` outputs."""
  model = models.get_model('ViT-Ti_16', num_classes=num_classes, patches={'size': (8, 8)},
                           hidden_size=32,
                           transformer={'num_layers': 2, 'mlp_dim': 64, 'num_heads': 4})
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3))))
  rng = np.random.default_rng(0)

  def draw(path, leaf):
    value = 0.5 * rng.standard_normal(leaf.shape).astype(np.float32)
    return value + 1 if path[-1].key == 'scale' else value

  return jax.tree_util.tree_map_with_path(draw, shapes['params'])


@pytest.fixture
def photos(tmp_path):
  """A real photo (colour), a greyscale photo, an RGBA image, and a broken file."""
  skimage_data = pytest.importorskip('skimage.data')
  Image.fromarray(skimage_data.chelsea()).save(tmp_path / 'chelsea.jpg')
  Image.fromarray(skimage_data.camera()).save(tmp_path / 'camera.png')  # Mode L.
  rgba = np.concatenate([skimage_data.coffee(), np.full((*skimage_data.coffee().shape[:2], 1),
                                                        128, np.uint8)], axis=-1)
  Image.fromarray(rgba, 'RGBA').save(tmp_path / 'coffee_rgba.png')
  (tmp_path / 'broken.jpg').write_text('a text file with an image extension')
  return tmp_path


@pytest.mark.slow
def test_command_prints_top5_names_converts_and_reports_bad_files(photos):
  checkpoint.save(tiny_params(10), photos / 'tiny.npz')
  files = ['chelsea.jpg', 'camera.png', 'coffee_rgba.png', 'broken.jpg', 'missing.png']
  run = subprocess.run(
      [sys.executable, '-m', 'vit_jax.tools.classify', f'--checkpoint={photos / "tiny.npz"}',
       *[str(photos / f) for f in files]],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env={**os.environ, 'PYTHONPATH': ROOT + os.pathsep + os.environ.get('PYTHONPATH', '')})
  assert run.returncode == 1, run.stderr[-2000:]  # Some files could not be read.
  out = run.stdout.splitlines()
  assert out[0].startswith('10 classes (cifar10 labels); inputs 32x32')
  cifar10 = set(labels.dataset_labels('cifar10'))
  for name in files[:3]:
    at = out.index(str(photos / name))
    ranks = out[at + 1:at + 6]
    assert [line.split('.')[0].strip() for line in ranks] == ['1', '2', '3', '4', '5']
    scores = [float(line.split('%')[0].split('.', 1)[1]) for line in ranks]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 100.01
    assert all(line.split('%')[1].split('[')[0].strip() in cifar10 for line in ranks)
  assert 'broken.jpg is not an image file Pillow can read' in run.stderr
  assert 'Image not found' in run.stderr and 'missing.png' in run.stderr


def test_top_classes_are_the_models_highest_logits(photos):
  loaded = loader.load_model(tiny_params(1000))
  assert loaded.image_size == (SIZE, SIZE) and loaded.normalization == 'minus_one_one'
  names = classify.class_names(1000)[1]
  predictions, errors = classify.classify(loaded, [str(photos / 'chelsea.jpg')], names=names)
  assert not errors
  (prediction,) = predictions
  inputs, _ = image_io.load_batch([photos / 'chelsea.jpg'], SIZE)
  logits = np.asarray(jax.jit(loaded.model.apply)({'params': loaded.params}, inputs))[0]
  np.testing.assert_array_equal(prediction.classes, np.argsort(-logits)[:5])
  probabilities = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
  np.testing.assert_allclose(prediction.scores, probabilities[prediction.classes], rtol=1e-5)
  assert prediction.names == [names[i] for i in prediction.classes]


def test_images_are_converted_to_rgb(photos):
  grey = image_io.read_image(photos / 'camera.png')
  assert grey.shape == (512, 512, 3) and grey.dtype == np.uint8
  assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
  # Half-transparent pixels are blended with white: (x + 255) / 2 with alpha 128/255.
  coffee = np.asarray(Image.open(photos / 'coffee_rgba.png'))[..., :3].astype(np.float64)
  blended = image_io.read_image(photos / 'coffee_rgba.png').astype(np.float64)
  expected = coffee * 128 / 255 + 255 * (1 - 128 / 255)
  assert np.abs(blended - expected).max() <= 1.5
  deep = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16)  # 16-bit greyscale.
  Image.fromarray(deep).save(photos / 'deep.png')
  read = image_io.read_image(photos / 'deep.png')
  assert read[0, 0, 0] == 0 and read[-1, -1, 0] == round(deep[-1, -1] / 65535 * 255)


def test_unreadable_files_raise_clear_errors(photos):
  with pytest.raises(image_io.ImageError, match='broken.jpg is not an image file'):
    image_io.read_image(photos / 'broken.jpg')
  with open(photos / 'chelsea.jpg', 'rb') as f:
    (photos / 'truncated.jpg').write_bytes(f.read()[:2000])
  with pytest.raises(image_io.ImageError, match='truncated.jpg could not be decoded'):
    image_io.read_image(photos / 'truncated.jpg')
  with pytest.raises(image_io.ImageError, match='is a directory'):
    image_io.read_image(photos)
  with pytest.raises(FileNotFoundError, match='nothing.png'):
    image_io.read_image(photos / 'nothing.png')


def test_preprocessing_matches_the_google_models():
  image = np.array([[[0, 127, 255]]], np.uint8)
  np.testing.assert_allclose(image_io.normalize(image), [[[-1., -0.5 / 127.5, 1.]]])
  resized = image_io.resize(np.zeros((40, 60, 3), np.uint8), (32, 16))
  assert resized.shape == (32, 16, 3)


def test_label_files_name_every_class():
  imagenet = labels.dataset_labels('imagenet2012')
  assert len(imagenet) == 1000 and imagenet[0] == 'tench, Tinca tinca'
  assert imagenet[281] == 'tabby, tabby cat'
  assert len(labels.dataset_labels('imagenet21k')) == 21843
  assert labels.dataset_labels('cifar10')[3] == 'cat'
  cifar100 = labels.dataset_labels('cifar100')
  assert len(cifar100) == 100 and cifar100[:2] == ('apple', 'aquarium_fish')
  assert cifar100[-1] == 'worm'
  assert labels.labels_for_head(21843)[0] == 'imagenet21k'
  assert labels.labels_for_head(37) is None
  description, names = classify.class_names(37)
  assert names is None and 'printing class indices' in description


def test_scores_for_multilabel_21k_heads_are_sigmoids():
  logits = np.array([[2., 0., -2.]])
  np.testing.assert_allclose(classify.scores_from_logits(logits, 'softmax').sum(), 1.)
  np.testing.assert_allclose(classify.scores_from_logits(logits, 'sigmoid'),
                             1 / (1 + np.exp(-logits)))
  wide = np.zeros((1, 21843))
  np.testing.assert_allclose(classify.scores_from_logits(wide), 0.5)  # auto -> sigmoid
