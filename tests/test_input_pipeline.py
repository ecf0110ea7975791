"""The training input stream: resumable at any step, repeated augmentation."""

import numpy as np

import tiny_config
from vit_jax.data import input_pipeline


def test_input_stream_resumes_at_any_step(data_overrides):
  config = tiny_config.for_data(data_overrides)
  source = input_pipeline.get_source(config, config.train_split)
  full = list(input_pipeline.train_dataset(config, source, 32).take(40).as_numpy_iterator())
  resumed = list(input_pipeline.train_dataset(config, source, 32, start_step=33)
                 .take(7).as_numpy_iterator())
  for a, b in zip(full[33:], resumed):  # Crosses the epoch boundary at step 32.
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])
  assert not np.array_equal(full[0]['label'], full[32]['label'])  # Epochs are reshuffled.


def test_repeated_augmentation_repeats_images_with_different_crops(data_overrides):
  config = tiny_config.for_data(data_overrides, repeated_augmentation=3)
  source = input_pipeline.get_source(config, config.train_split)
  batch = next(input_pipeline.train_dataset(config, source, 30).as_numpy_iterator())
  labels = batch['label'].reshape(10, 3)
  assert (labels == labels[:, :1]).all()  # Three copies of each image in a row...
  images = batch['image'].reshape(10, 3, 32, 32, 3)
  assert not np.array_equal(images[:, 0], images[:, 1])  # ...each augmented differently.
