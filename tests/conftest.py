"""Shared fixtures: optional oracles (timm, torch) and helpers for random-weight models."""

import os

import pytest

# Tests never download: TFDS reads the offline copy where the workplace has one.
SHARED_TFDS = os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'data', 'tfds')


@pytest.fixture(scope='session')
def timm():
  """The timm module, or a clean skip where torch or timm is not installed."""
  from vit_jax.timm_import import import_timm  # pylint: disable=g-import-not-at-top
  try:
    return import_timm()
  except ImportError as e:
    pytest.skip(f'timm oracle unavailable: {e}')
