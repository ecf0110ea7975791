"""FlexiViT patch resizing: big_vision's identity, a resized patch gives the original token."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import randomize
from vit_jax import checkpoint
from vit_jax import models
from vit_jax.checkpoint import resize
from vit_jax.models import loader


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
  # The original raised a shape error here: resampling has to be asked for.
  with pytest.raises(checkpoint.CheckpointError, match='resample_patch_embedding=True'):
    checkpoint.load_pretrained(pretrained_path=path, init_params=init,
                               model_config={'representation_size': None})
  loaded = checkpoint.load_pretrained(pretrained_path=path, init_params=init,
                                      model_config={'representation_size': None},
                                      resample_patch_embedding=True)
  np.testing.assert_allclose(loaded['embedding']['kernel'],
                             resize.resample_patchemb(params['embedding']['kernel'], (16, 16)),
                             rtol=1e-6)
  assert loaded['Transformer']['posembed_input']['pos_embedding'].shape == (1, 1 + 9, 16)


def _flexi_vit(patch):
  """FlexiViT's layout in small: gap pooling, no [CLS], a learned 4x4 grid at /8."""
  return models.VisionTransformer(
      num_classes=3, patches={'size': (patch, patch)}, hidden_size=16, classifier='gap',
      transformer=dict(num_layers=1, mlp_dim=32, num_heads=2))


@pytest.mark.parametrize('patch', [4, 5, 16])
def test_flexivit_checkpoint_runs_as_flexivits_model_at_another_patch_size(tmp_path, patch):
  params = randomize(_flexi_vit(8).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))['params'])
  checkpoint.save(params, tmp_path / 'flexi.npz')
  model = _flexi_vit(patch)
  init = model.init(jax.random.key(1), jnp.zeros((1, 40, 40, 3)))['params']
  loaded = checkpoint.load_pretrained(pretrained_path=tmp_path / 'flexi.npz', init_params=init,
                                      model_config={}, reset_head=False, posemb_resize='flexi',
                                      resample_patch_embedding=True)
  # big_vision flexi/vit.py _Model: the stored grid resized at run time to the token grid,
  # jax.image.resize(pos_emb, (1, h, w, c), "linear"), and Patchify's resampled kernel.
  h = 40 // patch
  stored = params['Transformer']['posembed_input']['pos_embedding'].reshape(1, 4, 4, 16)
  flexi = np.asarray(jax.image.resize(stored, (1, h, h, 16), 'linear')).reshape(1, h * h, 16)
  np.testing.assert_allclose(loaded['Transformer']['posembed_input']['pos_embedding'], flexi,
                             atol=1e-6)
  np.testing.assert_allclose(loaded['embedding']['kernel'], resize.resample_patchemb(
      params['embedding']['kernel'], (patch, patch)), rtol=1e-6)
  np.testing.assert_array_equal(loaded['head']['kernel'], params['head']['kernel'])
  # The original's zoom (corners aligned, no antialiasing) is measurably another embedding.
  zoom = resize.interpolate_posembed(params['Transformer']['posembed_input']['pos_embedding'],
                                     (h, h), num_prefix_tokens=0)
  assert np.sqrt(np.mean((zoom - flexi)**2) / np.mean(flexi**2)) > 0.02


@pytest.mark.parametrize('old,new', [(14, 24), (14, 8), (7, 10)])
def test_posemb_resize_timm_is_timms_resample_abs_pos_embed(timm, old, new):
  import torch  # pylint: disable=g-import-not-at-top
  posemb = np.random.default_rng(0).standard_normal((1, 1 + old * old, 8)).astype(np.float32)
  theirs = timm.layers.resample_abs_pos_embed(torch.from_numpy(posemb), [new, new],
                                              num_prefix_tokens=1).numpy()
  ours = resize.interpolate_posembed(posemb, (new, new), method='timm')
  np.testing.assert_allclose(ours, theirs, atol=1e-5)
  zoom = resize.interpolate_posembed(posemb, (new, new))
  assert np.abs(zoom - theirs).max() > 0.05  # The default (original's) resize differs.


def test_resize_options_reach_the_fit_through_the_loader(tmp_path):
  params = randomize(_flexi_vit(8).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))['params'])
  checkpoint.save(params, tmp_path / 'flexi.npz')
  model = models.get_model('ViT-Ti_16', num_classes=3, patches={'size': (4, 4)}, hidden_size=16,
                           classifier='gap',
                           transformer={'num_layers': 1, 'mlp_dim': 32, 'num_heads': 2})

  def load(**options):
    return loader.load_pretrained(tmp_path / 'flexi.npz', model, (40, 40),
                                  model_name='ViT-Ti_16', **options)[0]

  with pytest.raises(checkpoint.CheckpointError, match='config.resample_patch_embedding'):
    load()
  with pytest.raises(checkpoint.CheckpointError, match="posemb_resize='nearest'"):
    load(resample_patch_embedding=True, posemb_resize='nearest')
  loaded = load(resample_patch_embedding=True, posemb_resize='timm')
  np.testing.assert_allclose(
      loaded['Transformer']['posembed_input']['pos_embedding'],
      resize.interpolate_posembed(params['Transformer']['posembed_input']['pos_embedding'],
                                  (10, 10), num_prefix_tokens=0, method='timm'))
