"""FlexiViT patch resizing: big_vision's identity, a resized patch gives the original token."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import randomize
from vit_jax import checkpoint
from vit_jax import models
from vit_jax.checkpoint import resize


@pytest.mark.parametrize('old,new', [((8, 8), (8, 8)), ((8, 8), (12, 12)), ((8, 8), (16, 16)),
                                     ((4, 4), (10, 6)), ((6, 4), (9, 13)), ((7, 7), (14, 14))])
def test_resized_patch_gives_original_token(old, new):
  rng = np.random.default_rng(0)
  kernel = rng.standard_normal(old + (3, 5)).astype(np.float32)
  patches = rng.standard_normal((4,) + old + (3,)).astype(np.float32)
  tokens = np.einsum('nhwc,hwcd->nd', patches, kernel)
  # The image side of the identity, resized independently of `flexi`: jax.image.resize.
  resized = np.asarray(jax.image.resize(patches, (4,) + new + (3,), method='bilinear',
                                        antialias=False))
  new_kernel = resize.resample_patchemb(kernel, new)
  assert new_kernel.shape == new + (3, 5)
  np.testing.assert_allclose(np.einsum('nhwc,hwcd->nd', resized, new_kernel), tokens,
                             atol=1e-4, rtol=1e-4)


def test_shrinking_is_the_least_squares_kernel():
  rng = np.random.default_rng(1)
  kernel = rng.standard_normal((8, 8, 1, 1))
  new = resize.resample_patchemb(kernel, (4, 4))
  m = resize.resize_matrix((8, 8), (4, 4))
  # Normal equations of min ||M^T w' - w||: M (M^T w' - w) = 0.
  residual = m.T @ new.reshape(-1) - kernel.reshape(-1)
  np.testing.assert_allclose(m @ residual, 0, atol=1e-8)


def test_load_pretrained_at_another_patch_size(tmp_path):
  def vit(patch):
    return models.VisionTransformer(
        num_classes=3, patches={'size': (patch, patch)}, hidden_size=16, classifier='token',
        transformer=dict(num_layers=1, mlp_dim=32, num_heads=2))
  params = randomize(vit(8).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))['params'])
  path = tmp_path / 'flexi.npz'
  checkpoint.save(params, path)
  init = vit(16).init(jax.random.key(1), jnp.zeros((1, 48, 48, 3)))['params']
  loaded = checkpoint.load_pretrained(pretrained_path=path, init_params=init,
                                      model_config={'representation_size': None})
  np.testing.assert_allclose(loaded['embedding']['kernel'],
                             resize.resample_patchemb(params['embedding']['kernel'], (16, 16)),
                             rtol=1e-6)
  assert loaded['Transformer']['posembed_input']['pos_embedding'].shape == (1, 1 + 9, 16)
