"""The training input stream: resumable at any step, repeated augmentation; pipelines that
AutoGraph converts without warnings."""

import json
import logging
import sys

import numpy as np
import pytest

from helpers import make_image_folder
from helpers import run_python
import tiny_config
from vit_jax.data import input_pipeline


def test_input_stream_resumes_at_any_step(data_overrides):
  config = tiny_config.for_data(data_overrides)
  source = input_pipeline.get_source(config.dataset, config.train_split, data_dir=config.data_dir)
  full = list(input_pipeline.train_dataset(config, source, 32).take(40).as_numpy_iterator())
  resumed = list(input_pipeline.train_dataset(config, source, 32, start_step=33)
                 .take(7).as_numpy_iterator())
  for a, b in zip(full[33:], resumed):  # Crosses the epoch boundary at step 32.
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])
  assert not np.array_equal(full[0]['label'], full[32]['label'])  # Epochs are reshuffled.


def test_repeated_augmentation_repeats_images_with_different_crops(data_overrides):
  config = tiny_config.for_data(data_overrides, repeated_augmentation=3)
  source = input_pipeline.get_source(config.dataset, config.train_split, data_dir=config.data_dir)
  batch = next(input_pipeline.train_dataset(config, source, 30).as_numpy_iterator())
  labels = batch['label'].reshape(10, 3)
  assert (labels == labels[:, :1]).all()  # Three copies of each image in a row...
  images = batch['image'].reshape(10, 3, 32, 32, 3)
  assert not np.array_equal(images[:, 0], images[:, 1])  # ...each augmented differently.



# The preprocessing of the configs (the quick start's first), every registered op among them.
_PP = {
    'quick_start': (None, None),
    'deit': ('random_resized_crop|flip_lr|randaug("rand-m9-mstd0.5-inc1")|normalize("imagenet")|'
             'random_erasing(0.25)',
             'resize_small(36, method="bicubic", antialias=True)|central_crop|'
             'normalize("imagenet")'),
    'pretrain': ('inception_crop|flip_lr|randaug("rand-m10-n2")|value_range(-1, 1)',
                 'resize_small(36, method="area")|central_crop|value_range(-1, 1)'),
    'bit': ('resize(40)|random_crop(pad=0)|flip_lr|value_range(-1, 1)', 'resize|value_range(-1, 1)'),
}


class _Records(logging.Handler):

  def __init__(self):
    super().__init__(logging.WARNING)
    self.messages = []

  def emit(self, record):
    self.messages.append(record.getMessage())


def autograph_warnings(sources):
  """TensorFlow's AutoGraph warnings while the train and eval datasets of every `_PP` are built
  from each of `sources` (data overrides); building traces all their map functions."""
  records = _Records()
  tf_logger = logging.getLogger('tensorflow')
  tf_logger.addHandler(records)
  try:
    for data_overrides in sources:
      for pp_train, pp_eval in _PP.values():
        config = tiny_config.for_data(data_overrides)
        config.pp_train, config.pp_eval = pp_train or config.pp_train, pp_eval or config.pp_eval
        train, test = (input_pipeline.get_source(config.dataset, split, data_dir=config.data_dir)
                       for split in ('train', 'test'))
        input_pipeline.train_dataset(config, train, 8)
        input_pipeline.eval_dataset(test, 8, pp=config.pp_eval, image_size=config.image_size,
                                    skip_corrupt_images=True)
  finally:
    tf_logger.removeHandler(records)
  return [m for m in records.messages if 'AutoGraph' in m]


@pytest.mark.slow  # A subprocess.
def test_pipelines_build_without_autograph_warnings(data_overrides, tmp_path):
  """AutoGraph converts the Python functions a `map` calls; one it cannot convert logs
  "AutoGraph could not transform ... report this to the TensorFlow team", which users read as our
  bug. It warns once per function and process, so a fresh process builds the pipelines."""
  sources = [data_overrides,
             dict(dataset='imagefolder', data_dir=make_image_folder(str(tmp_path)))]
  out = run_python('tests/test_input_pipeline.py', json.dumps(sources))
  assert json.loads(out.splitlines()[-1]) == []


if __name__ == '__main__':
  print(json.dumps(autograph_warnings(json.loads(sys.argv[1]))))
