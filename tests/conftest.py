"""Shared fixtures: optional oracles (timm, torch) and helpers for random-weight models."""

import pytest

@pytest.fixture(scope='session')
def timm():
  """The timm module, or a clean skip where torch or timm is not installed."""
  from vit_jax.models.timm_import import import_timm  # pylint: disable=g-import-not-at-top
  try:
    return import_timm()
  except ImportError as e:
    pytest.skip(f'timm oracle unavailable: {e}')

@pytest.fixture(scope='session')
def data_overrides(tmp_path_factory):
  """Real CIFAR-10 slices where the offline copy exists, a generated image folder otherwise.

  Tests never download: TFDS reads the offline copy where the workplace has one.
  """
  from helpers import cifar_dir, make_image_folder  # pylint: disable=g-import-not-at-top
  cifar = cifar_dir()
  if cifar:
    return dict(dataset='cifar10', data_dir=cifar)
  root = make_image_folder(str(tmp_path_factory.mktemp('images')),
                           splits=(('train', 400), ('test', 100)))
  return dict(dataset='imagefolder', data_dir=root)
