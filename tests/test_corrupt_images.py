"""Corrupt images: a run skips them (logged once, counted, weightless), or stops naming them."""

import io
import logging
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from helpers import REPO, cifar_dir, job_for, make_image_folder, stepper
import tiny_config
from vit_jax import checkpoint
from vit_jax.data import input_pipeline
from vit_jax.training import step as step_lib
from vit_jax.training import train

TRAIN_PER_CLASS, TEST_PER_CLASS, CLASSES, SIZE = 8, 3, 3, 8


@pytest.fixture
def folder(tmp_path):
  """An image folder with two broken train files (random bytes, a truncated PNG), one test.

  A fresh one per test: names are logged once per process, so no test sees another's files.
  """
  root = str(tmp_path / 'images')
  make_image_folder(root, splits=(('train', TRAIN_PER_CLASS), ('test', TEST_PER_CLASS)),
                    num_classes=CLASSES, size=SIZE)
  rng = np.random.default_rng(1)
  paths = {
      'random': os.path.join(root, 'train', 'class_0', 'random_bytes.png'),
      'truncated': os.path.join(root, 'train', 'class_1', 'truncated.png'),
      'test': os.path.join(root, 'test', 'class_2', 'random_bytes.png'),
  }
  for key in ('random', 'test'):
    with open(paths[key], 'wb') as f:
      f.write(rng.bytes(300))
  png = io.BytesIO()
  Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3)).astype(np.uint8)).save(png, 'PNG')
  with open(paths['truncated'], 'wb') as f:
    f.write(png.getvalue()[:len(png.getvalue()) // 2])
  return root, paths


def _config(root, **overrides):
  config = tiny_config.get_config('imagefolder')
  config.update(data_dir=root, train_split='train', image_size=SIZE, pp_train='flip_lr',
                pp_eval='resize', shuffle_buffer=64)
  config.evals.test.split = 'test'
  config.model.patches = {'size': (4, 4)}
  config.update(overrides)
  return config


def _warnings_naming(records, path):
  return [r for r in records if r.levelno >= logging.WARNING and path in r.getMessage()]


def test_train_stream_goes_on_with_full_batches_and_logs_each_file_once(folder, caplog):
  root, paths = folder
  config = _config(root)
  source = input_pipeline.get_source(config.dataset, 'train', data_dir=config.data_dir)
  n = source.num_examples
  assert n == CLASSES * TRAIN_PER_CLASS + 2
  batch, epochs = 5, 3
  steps = epochs * n // batch  # 15 batches of 5: two whole epochs of 26 and 23 of a third.
  with caplog.at_level(logging.INFO):
    batches = list(input_pipeline.train_dataset(config, source, batch).take(steps)
                   .as_numpy_iterator())
  assert len(batches) == steps
  assert all(b['image'].shape == (batch, SIZE, SIZE, 3) and b['mask'].shape == (batch,)
             for b in batches)
  masks = np.concatenate([b['mask'] for b in batches])
  images = np.concatenate([b['image'] for b in batches])
  # Every epoch draws both broken files once; the stream covers all but the last example.
  full = masks[:2 * n].reshape(2, n)
  assert (full.sum(1) == n - 2).all(), full
  assert (masks == 0).sum() in (4, 5, 6)
  assert not images[masks == 0].any()  # The skipped rows are zero images...
  assert all(images[i].any() for i in np.flatnonzero(masks))  # ...the others real ones.
  for key in ('random', 'truncated'):
    assert len(_warnings_naming(caplog.records, paths[key])) == 1, key  # Not once per epoch.


def test_resumed_stream_keeps_the_skipped_rows_in_place(folder):
  root, _ = folder
  config = _config(root)
  source = input_pipeline.get_source(config.dataset, 'train', data_dir=config.data_dir)
  full = list(input_pipeline.train_dataset(config, source, 4).take(16).as_numpy_iterator())
  resumed = list(input_pipeline.train_dataset(config, source, 4, start_step=9)
                 .take(7).as_numpy_iterator())
  for a, b in zip(full[9:], resumed):
    for key in ('image', 'label', 'mask'):
      np.testing.assert_array_equal(a[key], b[key])
  assert min(np.concatenate([b['mask'] for b in full])) == 0


def test_fatal_switch_stops_naming_the_file(folder):
  root, paths = folder
  config = _config(root, skip_corrupt_images=False)
  source = input_pipeline.get_source(config.dataset, 'train', data_dir=config.data_dir)
  with pytest.raises(tf.errors.OpError, match='Cannot decode image') as error:
    for _ in input_pipeline.train_dataset(config, source, 5).take(12).as_numpy_iterator():
      pass
  assert paths['random'] in str(error.value) or paths['truncated'] in str(error.value)
  assert 'skip_corrupt_images' in str(error.value)


def test_eval_masks_out_and_counts_a_corrupt_image(folder, caplog):
  root, paths = folder
  config = _config(root)
  source = input_pipeline.get_source(config.dataset, 'test', data_dir=config.data_dir)
  with caplog.at_level(logging.INFO):
    ds, num_batches = input_pipeline.eval_dataset(source, 4, pp=config.pp_eval,
                                                  image_size=config.image_size,
                                                  skip_corrupt_images=True)
    batches = list(ds.as_numpy_iterator())
  assert len(batches) == num_batches == 3  # 10 examples: 4 + 4 + 2 and 2 padding rows.
  masks = np.concatenate([b['mask'] for b in batches])
  skipped = np.concatenate([b['skipped'] for b in batches])
  assert masks.sum() == CLASSES * TEST_PER_CLASS and skipped.sum() == 1
  assert masks[10:].sum() == skipped[10:].sum() == 0  # Padding is neither.
  assert len(_warnings_naming(caplog.records, paths['test'])) == 1


def test_an_undecodable_tfds_style_record_is_named_by_position(caplog):
  """A source without names (and bytes, not files): the message gives the stream position."""
  good = tf.io.encode_png(tf.zeros((SIZE, SIZE, 3), tf.uint8))
  records = tf.data.Dataset.range(12).map(lambda i: {
      'image': tf.where(i == 7, tf.constant(b'not an image'), good), 'label': i})
  source = input_pipeline.Source(
      records, lambda ex: {'image': tf.io.decode_png(ex['image'], 3), 'label': ex['label']},
      12, 12, 12)
  config = _config('', pp_train='flip_lr', shuffle_buffer=1)
  with caplog.at_level(logging.INFO):
    batch = next(input_pipeline.train_dataset(config, source, 12).as_numpy_iterator())
  assert batch['mask'].tolist() == [1.] * 7 + [0.] + [1.] * 4
  assert batch['label'].tolist() == list(range(12))  # Labels keep their rows.
  assert _warnings_naming(caplog.records, 'example at stream position 7')


def test_a_batch_of_nothing_but_failures_is_an_error_not_a_skip():
  records = tf.data.Dataset.range(8).map(lambda i: {'image': tf.constant(b'junk'), 'label': i})
  source = input_pipeline.Source(
      records, lambda ex: {'image': tf.io.decode_png(ex['image'], 3), 'label': ex['label']},
      8, 8, 8)
  config = _config('', pp_train='flip_lr', shuffle_buffer=1)
  with pytest.raises(tf.errors.OpError, match='None of the 4 images of a batch'):
    next(input_pipeline.train_dataset(config, source, 4).as_numpy_iterator())


@pytest.mark.skipif(cifar_dir() is None, reason='needs the offline CIFAR-10')
def test_tfds_records_are_named_by_split_and_index():
  config = tiny_config.get_config()
  config.data_dir = cifar_dir()
  source = input_pipeline.get_source(config.dataset, 'train[:3]', data_dir=config.data_dir)
  names = [source.name(ex).numpy() for ex in source.encoded]
  assert names == [f'cifar10 train[:3] example {i}'.encode() for i in range(3)]


# ---------------------------------------------------------------------------------------------
# The train step and the loop.


def _step_setup(**overrides):
  config = tiny_config.get_config()
  config.update(image_size=SIZE, **overrides)
  config.model.patches = {'size': (4, 4)}
  config.model.transformer.dropout_rate = 0.0
  job = job_for(config, CLASSES)
  return stepper(job), job.init_state()


def _batch(mask=None, seed=0, batch=8):
  rng = np.random.default_rng(seed)
  out = {'image': rng.standard_normal((batch, SIZE, SIZE, 3)).astype(np.float32),
         'label': rng.integers(0, CLASSES, batch).astype(np.int32)}
  if mask is not None:
    out['mask'] = np.asarray(mask, np.float32)
  return out


def _params_equal(a, b):
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_an_all_valid_mask_changes_nothing_bitwise():
  step, state = _step_setup()
  without, metrics_without = step(state, _batch())
  with_mask, metrics_with = step(state, _batch(np.ones(8)))
  assert _params_equal(without.params, with_mask.params)
  assert np.array_equal(metrics_without['loss'], metrics_with['loss'])
  assert int(metrics_with['skipped']) == 0


@pytest.mark.parametrize('mixup', [None, {'mixup_alpha': 0.8, 'cutmix_alpha': 1.0}])
def test_a_skipped_example_reaches_neither_the_loss_nor_its_mixup_partner(mixup):
  mixup = None if mixup is None else ml_collections.ConfigDict(mixup)
  step, state = _step_setup(mixup=mixup)
  mask = np.ones(8)
  mask[2] = 0
  a, b = _batch(mask), _batch(mask)
  b['image'][2] = 1e3  # Whatever the skipped row holds, nothing changes.
  b['label'][2] = (a['label'][2] + 1) % CLASSES
  state_a, metrics_a = step(state, a)
  state_b, metrics_b = step(state, b)
  assert _params_equal(state_a.params, state_b.params)
  assert np.array_equal(metrics_a['loss'], metrics_b['loss'])
  assert int(metrics_a['skipped']) == 1
  if mixup is None:  # The loss is the mean over the 7 others.
    keep = np.flatnonzero(mask)
    _, metrics_7 = step(state, {k: v[keep] for k, v in _batch(seed=0).items()})
    np.testing.assert_allclose(metrics_a['loss'], metrics_7['loss'], rtol=1e-6)


@pytest.mark.slow
def test_a_run_over_corrupt_files_completes_counts_them_and_resumes_exactly(folder, tmp_path):
  root, paths = folder
  config = _config(root, total_steps=8, batch_size=6, eval_batch_size=4, log_every=2,
                   checkpoint_every=4, export_npz=True)
  config.evals.test.every = 8
  config.lr.decay_type = 'constant'  # The 4-step run's schedule must be the 8-step run's.
  config.lr.warmup_steps = 0
  straight = train.train_and_evaluate(config, str(tmp_path / 'straight'))
  assert straight['step'] == 8
  source = input_pipeline.get_source(config.dataset, 'train', data_dir=config.data_dir)
  expected = sum(int((b['mask'] == 0).sum()) for b in input_pipeline.train_dataset(
      config, source, 6).take(8).as_numpy_iterator())
  assert expected >= 2  # 48 examples: nearly two epochs of 26.
  assert straight['skipped_images'] == expected
  assert straight['test/skipped'] == 1 and straight['test/examples'] == CLASSES * TEST_PER_CLASS
  log = (tmp_path / 'straight' / 'train.0.log').read_text()
  for key in ('random', 'truncated', 'test'):
    assert log.count(paths[key]) == 1, key  # Not once per epoch, nor once per evaluation.

  resumed_dir = str(tmp_path / 'resumed')
  half = ml_collections.ConfigDict(config.to_dict())
  half.total_steps = 4
  train.train_and_evaluate(half, resumed_dir)
  resumed = train.train_and_evaluate(config, resumed_dir)
  # Later jobs in the same process log to their own workdirs only.
  assert (tmp_path / 'straight' / 'train.0.log').read_text() == log
  assert resumed['skipped_images'] == expected  # Counted over the whole run.
  a = checkpoint.flatten(checkpoint.load(tmp_path / 'straight' / 'model.npz'))
  b = checkpoint.flatten(checkpoint.load(os.path.join(resumed_dir, 'model.npz')))
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_accumulation_over_corrupt_images_gives_one_batch_s_parameters(folder, tmp_path):
  """Issue 28: through the command line, one SGD step at accum_steps 1 and 4 over a batch of 24
  of the folder's 26 images, corrupt ones among them."""
  root, _ = folder
  exported, losses = {}, {}
  for accum in (1, 4):
    workdir = tmp_path / f'accum_{accum}'
    args = [sys.executable, '-m', 'vit_jax.main',
            f'--config={os.path.join(REPO, "tests", "tiny_config.py")}:imagefolder',
            f'--workdir={workdir}', f'--config.data_dir={root}', '--config.train_split=train',
            f'--config.image_size={SIZE}', '--config.model.patches.size=(4, 4)',
            '--config.model.transformer.dropout_rate=0', '--config.pp_train=flip_lr',
            '--config.pp_eval=resize', '--config.shuffle_buffer=64', '--config.batch_size=24',
            f'--config.accum_steps={accum}', '--config.total_steps=1', '--config.log_every=1',
            '--config.optimizer.name=sgd', '--config.lr.base=0.5', '--config.lr.warmup_steps=0',
            '--config.lr.decay_type=constant', '--config.grad_clip_norm=0',
            '--config.evals.test.split=test', '--config.evals.test.every=0']
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([REPO, os.environ.get('PYTHONPATH', '')])}
    run = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    log = (workdir / 'train.0.log').read_text()
    skipped = re.search(r'(\d+) training images skipped so far', log)
    assert skipped and int(skipped.group(1)) >= 1
    losses[accum] = re.search(r'step 1/1 .* loss ([\d.]+) .* \|g\| ([\d.]+)', log).groups()
    exported[accum] = checkpoint.flatten(checkpoint.load(workdir / 'model.npz'))
  assert losses[4] == losses[1]  # The logged loss and gradient norm, as printed.
  assert exported[1].keys() == exported[4].keys()
  for key in exported[1]:
    np.testing.assert_allclose(exported[4][key], exported[1][key], atol=2e-6, rtol=0,
                               err_msg=key)


@pytest.mark.parametrize('units', [1, 2, 4])
def test_skipped_rows_take_the_mirror_row_of_their_device_block(units):
  """Within each device's block (no image crosses devices); with one block, the whole batch's
  mirror."""
  x = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
  keep = np.ones(8, bool)
  keep[[0, 5]] = False
  got = np.asarray(step_lib.mirror_skipped(jnp.asarray(x), jnp.asarray(keep), units))
  block = 8 // units
  expected = x.copy()
  for row in (0, 5):
    start = row // block * block
    expected[row] = x[start + block - 1 - (row - start)]
  np.testing.assert_array_equal(got, expected)
