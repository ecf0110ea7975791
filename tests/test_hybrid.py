"""Hybrid R+ViT: counts against the original, the `.npz` layout, and timm's loader as oracle."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import count_params
from helpers import init_key
from helpers import param_shapes
from helpers import random_images
from helpers import random_params
from vit_jax import checkpoint
from vit_jax import models
from vit_jax.models.bit import model as bit_model
from vit_jax.models.vit import torch_model

# Parameter counts of the original library at 224 px with 1000 classes.
ORIGINAL_COUNTS = {
    'R+ViT-Ti_16': 6_337_704, 'R50+ViT-B_16': 98_659_112, 'R26+ViT-B_32': 101_383_976,
    'R26+ViT-S_32': 36_431_912, 'R50+ViT-L_32': 328_994_856,
}
# Tiny transformer for tests about the ResNet part.
TINY = dict(hidden_size=32, transformer={'num_layers': 1, 'mlp_dim': 64, 'num_heads': 2})


@pytest.mark.parametrize('name', sorted(ORIGINAL_COUNTS))
def test_parameter_count_equals_original(name):
  assert count_params(models.get_model(name, num_classes=1000), 224) == ORIGINAL_COUNTS[name]


def test_resnet_parameters_sit_at_the_top_level_with_the_npz_names():
  shapes = param_shapes(models.get_model('R50+ViT-B_16', num_classes=10), 224)
  assert set(shapes) == {'conv_root', 'gn_root', 'block1', 'block2', 'block3', 'embedding',
                         'cls', 'Transformer', 'head'}
  assert [len(shapes[f'block{s}']) for s in (1, 2, 3)] == [3, 4, 9]
  assert set(shapes['block2']['unit1']) == {'conv1', 'conv2', 'conv3', 'conv_proj', 'gn1', 'gn2',
                                            'gn3', 'gn_proj'}
  assert set(shapes['block2']['unit2']) == {'conv1', 'conv2', 'conv3', 'gn1', 'gn2', 'gn3'}
  assert shapes['conv_root']['kernel'].shape == (7, 7, 3, 64)
  assert shapes['block3']['unit9']['conv3']['kernel'].shape == (1, 1, 256, 1024)
  assert shapes['embedding']['kernel'].shape == (1, 1, 1024, 768)  # 1x1 on the /16 map.
  assert shapes['Transformer']['posembed_input']['pos_embedding'].shape == (1, 197, 768)

  shapes = param_shapes(models.get_model('R+ViT-Ti_16', num_classes=10), 224)
  assert set(shapes) == {'conv_root', 'gn_root', 'embedding', 'cls', 'Transformer', 'head'}
  assert shapes['embedding']['kernel'].shape == (8, 8, 64, 192)
  assert shapes['Transformer']['posembed_input']['pos_embedding'].shape == (1, 50, 192)  # 7x7.

  shapes = param_shapes(models.get_model('R26+ViT-S_32', num_classes=10), 224)
  assert shapes['embedding']['kernel'].shape == (1, 1, 2048, 384)
  assert shapes['Transformer']['posembed_input']['pos_embedding'].shape == (1, 50, 384)


def test_units_start_as_their_shortcut():
  unit = bit_model.HybridUnit(features=32, strides=(2, 2))
  params = jax.jit(unit.init)(init_key(), jnp.zeros((1, 8, 8, 64)))['params']
  assert not np.any(params['gn3']['scale'])  # The residual branch starts switched off.
  assert np.all(params['gn_proj']['scale'] == 1)
  assert params['conv2']['kernel'].shape == (3, 3, 32, 32)
  assert params['conv_proj']['kernel'].shape == (1, 1, 64, 128)


def test_outputs_and_options():
  model = models.get_model('R26+ViT-S_32', num_classes=5, resnet={'num_layers': (1, 1)}, **TINY)
  x = random_images(2, 32)
  params = random_params(model, 32)

  def apply(m, p):
    return jax.jit(m.apply)({'params': p}, x)

  original = apply(model, params)
  assert original.shape == (2, 5)
  # The epsilons are wired through: timm's convention moves the logits, but only a little.
  timm_like = apply(models.get_model('R26+ViT-S_32', num_classes=5, resnet={
      'num_layers': (1, 1), **torch_model.TIMM_HYBRID_EPS}, **TINY), params)
  assert 1e-7 < np.abs(original - timm_like).max() < 1e-2


def test_bad_input_names_the_problem():
  model = models.get_model('R26+ViT-S_32', num_classes=5, resnet={'num_layers': (1, 0)}, **TINY)
  with pytest.raises(ValueError, match=r'num_layers=\(1, 0\)'):
    param_shapes(model, 32)
  # 40 px: the stride-8 map is 5x5, which 2x2 patches do not tile; as timm's HybridEmbed
  # (a VALID projection) the last row and column of the map are dropped, a 2x2 grid.
  model = models.get_model('R26+ViT-S_32', num_classes=5, resnet={'num_layers': (1, 1)},
                           patches={'size': (2, 2)}, **TINY)
  assert param_shapes(model, 40)['Transformer']['posembed_input']['pos_embedding'].shape[1] == 5


@pytest.mark.parametrize('name', ['R26+ViT-S_32', 'R+ViT-Ti_16'])
def test_checkpoint_round_trip_is_exact(tmp_path, name):
  params = random_params(models.get_model(name, num_classes=10), 64)
  path = tmp_path / 'hybrid.npz'
  checkpoint.save(params, path)
  expected = checkpoint.flatten(params)
  with np.load(path) as data:
    assert set(data.files) == set(expected)  # The file's keys are our parameter paths.
  loaded = checkpoint.flatten(checkpoint.load(path))
  assert set(loaded) == set(expected)
  for key, value in expected.items():
    assert loaded[key].dtype == value.dtype and np.array_equal(loaded[key], value), key


def test_old_4d_groupnorm_and_new_resolution(tmp_path):
  model = models.get_model('R26+ViT-S_32', num_classes=10, resnet={'num_layers': (1, 1)}, **TINY)
  params = random_params(model, 64)  # Stride-8 map: 8x8 patches grid at 64 px.
  flat = checkpoint.flatten(params)
  old_style = {key: value.reshape(1, 1, 1, -1) if '/gn' in key else value
               for key, value in flat.items()}
  path = tmp_path / 'old.npz'
  np.savez(path, **old_style)
  loaded = checkpoint.flatten(checkpoint.load(path))
  assert loaded['block1/unit1/gn_proj/scale'].shape == (256,)
  np.testing.assert_array_equal(loaded['gn_root/bias'], flat['gn_root/bias'])

  # Fine-tuning at 96 px: every ResNet weight carries over, the position embedding is resized.
  target = models.get_model('R26+ViT-S_32', num_classes=3, resnet={'num_layers': (1, 1)}, **TINY)
  init = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), param_shapes(target, 96))
  tuned = checkpoint.flatten(checkpoint.load_pretrained(
      pretrained_path=path, init_params=init, model_config=models.MODEL_CONFIGS['R26+ViT-S_32']))
  assert tuned['Transformer/posembed_input/pos_embedding'].shape == (1, 1 + 12 * 12, 32)
  assert tuned['head/kernel'].shape == (32, 3)
  for key, value in flat.items():
    if key.startswith(('conv_root', 'gn_root', 'block')):
      np.testing.assert_array_equal(tuned[key], value, err_msg=key)


@pytest.mark.parametrize('ours,theirs,depth', [
    # The whole R50 stem and ViT-B width; 2 of the 12 encoder blocks keep the test fast (the
    # encoder itself is checked against timm in test_timm_parity).
    ('R50+ViT-B_16', 'vit_base_r50_s16_224', 2),
    ('R26+ViT-S_32', 'vit_small_r26_s32_224', 12),
    ('R+ViT-Ti_16', 'vit_tiny_r_s16_p8_224', 12),
])
def test_logits_match_timm(timm, tmp_path, ours, theirs, depth):
  """Our file in timm's own npz loader, at 64 px. timm's port standardizes with
  sqrt(var + 1e-8) and GroupNorm eps 1e-5, so our model takes those epsilons here (the
  original's differ, see test_outputs_and_options); GELU is exact on both sides."""
  import torch  # pylint: disable=g-import-not-at-top
  model = models.get_model(ours, num_classes=10, resnet=torch_model.TIMM_HYBRID_EPS,
                           transformer={'gelu_approximate': False, 'num_layers': depth})
  params = random_params(model, 64)
  path = tmp_path / 'hybrid.npz'
  checkpoint.save(params, path)
  reference = timm.create_model(theirs, pretrained=False, num_classes=10, img_size=64,
                                depth=depth).eval()
  reference.load_pretrained(str(path))
  images = random_images(2, 64)
  with torch.no_grad():
    expected = reference(torch.from_numpy(np.array(images).transpose(0, 3, 1, 2))).numpy()
  logits = np.asarray(jax.jit(model.apply)({'params': params}, images))
  assert np.abs(logits).max() > 0.1  # The comparison must carry signal.
  np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)
