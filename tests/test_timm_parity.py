"""Oracle: files written by `checkpoint.save` load in timm's own npz loader with equal logits."""

import jax
import numpy as np
import pytest

from helpers import randomize
from vit_jax import checkpoint
from vit_jax import models


def timm_logits(timm, name, path, images, **kwargs):
  import torch  # pylint: disable=g-import-not-at-top
  model = timm.create_model(name, pretrained=False, **kwargs).eval()
  model.load_pretrained(str(path))
  with torch.no_grad():
    return model(torch.from_numpy(np.array(images).transpose(0, 3, 1, 2))).numpy()


@pytest.mark.parametrize('ours,theirs,timm_kwargs,gelu_approximate', [
    ('ViT-Ti_16', 'vit_tiny_patch16_224', {}, True),
    ('ViT-S_32-gap', 'vit_small_patch32_224',
     dict(class_token=False, global_pool='avg', fc_norm=False), True),
    ('ViT-Ti_16', 'vit_tiny_patch16_224', {}, False),
])
def test_logits_match_timm(timm, tmp_path, ours, theirs, timm_kwargs, gelu_approximate):
  model = models.get_model(ours, num_classes=10,
                           transformer={'gelu_approximate': gelu_approximate})
  images = jax.random.uniform(jax.random.key(1), (2, 224, 224, 3), minval=-1., maxval=1.)
  params = randomize(model.init(jax.random.key(0), images[:1])['params'])
  path = tmp_path / 'model.npz'
  checkpoint.save(params, path)
  act = 'gelu_tanh' if gelu_approximate else 'gelu'
  expected = timm_logits(timm, theirs, path, images, num_classes=10, act_layer=act,
                         **timm_kwargs)
  ours_logits = np.asarray(model.apply({'params': params}, images))
  assert np.abs(ours_logits).max() > 0.1  # The comparison must carry signal.
  np.testing.assert_allclose(ours_logits, expected, atol=1e-4, rtol=0)
