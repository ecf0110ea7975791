"""Original-format `.npz` checkpoints: round trips, layouts, errors, and resolution transfer."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

from helpers import randomize
from vit_jax import checkpoint
from vit_jax import models

TINY = dict(patches={'size': (4, 4)}, hidden_size=32,
            transformer={'num_layers': 2, 'mlp_dim': 64, 'num_heads': 4})


def tiny_model(**overrides):
  return models.get_model('ViT-Ti_16', num_classes=overrides.pop('num_classes', 5),
                          **{**TINY, **overrides})


def init(model, size=16):
  return model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)))['params']


def test_round_trip_is_bit_exact(tmp_path):
  params = randomize(init(tiny_model()))
  path = tmp_path / 'vit.npz'
  checkpoint.save(params, path)
  restored = checkpoint.load(path)
  flat, flat_restored = checkpoint.flatten(params), checkpoint.flatten(restored)
  assert set(flat) == set(flat_restored)
  for key in flat:
    np.testing.assert_array_equal(flat[key], flat_restored[key], err_msg=key)
    assert flat_restored[key].dtype == np.float32
  assert not [f for f in os.listdir(tmp_path) if f.startswith('.tmp')]


def test_file_has_original_flat_keys(tmp_path):
  path = tmp_path / 'vit.npz'
  checkpoint.save(init(tiny_model()), path)
  keys = set(np.load(path).files)
  assert 'Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel' in keys
  assert 'Transformer/encoderblock_1/MlpBlock_3/Dense_1/bias' in keys
  assert 'Transformer/posembed_input/pos_embedding' in keys
  assert {'cls', 'embedding/kernel', 'head/kernel', 'Transformer/encoder_norm/scale'} <= keys


def test_scanned_model_saves_per_layer_keys_and_loads_back(tmp_path):
  plain = randomize(init(tiny_model()))
  path = tmp_path / 'plain.npz'
  checkpoint.save(plain, path)
  scanned_model = tiny_model(transformer={**TINY['transformer'], 'scan': True})
  scanned = checkpoint.load_pretrained(pretrained_path=path, init_params=init(scanned_model),
                                       model_config={'representation_size': None},
                                       reset_head=False)
  assert scanned['Transformer']['encoderblock']['LayerNorm_0']['scale'].shape == (2, 32)
  x = jax.random.normal(jax.random.key(2), (2, 16, 16, 3))
  np.testing.assert_allclose(scanned_model.apply({'params': scanned}, x),
                             tiny_model().apply({'params': plain}, x), atol=1e-5)
  checkpoint.save(scanned, tmp_path / 'scanned.npz')
  assert set(np.load(tmp_path / 'scanned.npz').files) == set(np.load(path).files)


def test_opt_target_prefix_and_old_groupnorm_shapes(tmp_path):
  path = tmp_path / 'old.npz'
  np.savez(path, **{'opt/target/cls': np.ones((1, 1, 4), np.float32),
                    'opt/target/gn_root/scale': np.ones((1, 1, 1, 8), np.float32),
                    'opt/target/block1/unit1/gn2/bias': np.ones((1, 1, 1, 8), np.float32)})
  params = checkpoint.load(path)
  assert params['cls'].shape == (1, 1, 4)
  assert params['gn_root']['scale'].shape == (8,)
  assert params['block1']['unit1']['gn2']['bias'].shape == (8,)


def test_bfloat16_params_are_saved_as_float32(tmp_path):
  params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), init(tiny_model()))
  checkpoint.save(params, tmp_path / 'bf16.npz')
  with np.load(tmp_path / 'bf16.npz') as data:
    assert all(data[k].dtype == np.float32 for k in data.files)


def test_missing_and_corrupt_files_raise(tmp_path):
  with pytest.raises(FileNotFoundError, match='nope.npz'):
    checkpoint.load(tmp_path / 'nope.npz')
  bad = tmp_path / 'bad.npz'
  bad.write_bytes(b'not a zip file at all')
  with pytest.raises(checkpoint.CheckpointError, match='bad.npz'):
    checkpoint.load(bad)
  good = tmp_path / 'good.npz'
  checkpoint.save(init(tiny_model()), good)
  truncated = tmp_path / 'truncated.npz'
  truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
  with pytest.raises(checkpoint.CheckpointError, match='truncated.npz'):
    checkpoint.load(truncated)


def test_failed_save_leaves_previous_file_intact(tmp_path, monkeypatch):
  path = tmp_path / 'ckpt.npz'
  checkpoint.save({'a': np.ones(3, np.float32)}, path)
  def broken_savez(*args, **kwargs):
    raise OSError('disk full')
  monkeypatch.setattr(np, 'savez', broken_savez)
  with pytest.raises(OSError, match='disk full'):
    checkpoint.save({'a': np.zeros(3, np.float32)}, path)
  monkeypatch.undo()
  np.testing.assert_array_equal(checkpoint.load(path)['a'], np.ones(3))
  assert os.listdir(tmp_path) == ['ckpt.npz']


def test_inspect_params_names_keys_and_shapes():
  expected = {'a': {'kernel': np.zeros((2, 3))}, 'b': np.zeros(4)}
  with pytest.raises(checkpoint.CheckpointError, match=r'a/kernel: checkpoint \(3, 2\), model \(2, 3\)'):
    checkpoint.inspect_params(params={'a': {'kernel': np.zeros((3, 2))}, 'b': np.zeros(4)},
                              expected=expected)
  with pytest.raises(checkpoint.CheckpointError, match=r'missing keys: b \(expected \(4,\)\)'):
    checkpoint.inspect_params(params={'a': {'kernel': np.zeros((2, 3))}}, expected=expected)
  with pytest.raises(checkpoint.CheckpointError, match=r'unexpected keys: c \(1,\)'):
    checkpoint.inspect_params(params={'a': {'kernel': np.zeros((2, 3))}, 'b': np.zeros(4),
                                      'c': np.zeros(1)}, expected=expected)


def reference_resize(posemb, prefix, old, new):
  """The original library's recipe, written out with scipy directly."""
  tok, grid = posemb[:, :prefix], posemb[0, prefix:].reshape(old[0], old[1], -1)
  grid = scipy.ndimage.zoom(grid, (new[0] / old[0], new[1] / old[1], 1), order=1)
  return np.concatenate([tok, grid.reshape(1, new[0] * new[1], -1)], axis=1)


@pytest.mark.parametrize('has_class_token', [True, False])
def test_interpolate_posembed_equals_scipy_zoom(has_class_token):
  prefix = int(has_class_token)
  posemb = np.random.default_rng(0).standard_normal((1, prefix + 14 * 14, 16)).astype(np.float32)
  out = checkpoint.interpolate_posembed(posemb, prefix + 24 * 24, has_class_token)
  assert out.shape == (1, prefix + 576, 16)
  np.testing.assert_allclose(out, reference_resize(posemb, prefix, (14, 14), (24, 24)), atol=1e-6)
  if has_class_token:
    np.testing.assert_array_equal(out[:, 0], posemb[:, 0])


def test_interpolate_posembed_non_square_grids():
  posemb = np.random.default_rng(1).standard_normal((1, 1 + 6 * 4, 8)).astype(np.float32)
  out = checkpoint.interpolate_posembed(posemb, (9, 10), old_grid=(6, 4))
  assert out.shape == (1, 91, 8)
  np.testing.assert_allclose(out, reference_resize(posemb, 1, (6, 4), (9, 10)), atol=1e-6)
  with pytest.raises(checkpoint.CheckpointError, match='not a square'):
    checkpoint.interpolate_posembed(posemb, 1 + 90)


def test_load_pretrained_fine_tunes_at_higher_resolution(tmp_path):
  pretrain_model = tiny_model(num_classes=21, representation_size=32)
  pretrained = randomize(init(pretrain_model, size=16))
  path = tmp_path / 'pretrained.npz'
  checkpoint.save(pretrained, path)

  finetune_model = tiny_model(num_classes=3)
  init_params = init(finetune_model, size=32)
  params = checkpoint.load_pretrained(
      pretrained_path=path, init_params=init_params,
      model_config=models.MODEL_CONFIGS['ViT-Ti_16'])
  assert 'pre_logits' not in params
  np.testing.assert_array_equal(params['head']['kernel'], init_params['head']['kernel'])
  posemb = params['Transformer']['posembed_input']['pos_embedding']
  old = pretrained['Transformer']['posembed_input']['pos_embedding']
  np.testing.assert_allclose(posemb, reference_resize(np.asarray(old), 1, (4, 4), (8, 8)),
                             atol=1e-6)
  np.testing.assert_array_equal(params['Transformer']['encoderblock_1']['MlpBlock_3']['Dense_0']
                                ['kernel'], pretrained['Transformer']['encoderblock_1']
                                ['MlpBlock_3']['Dense_0']['kernel'])
  logits = finetune_model.apply({'params': params}, jnp.ones((2, 32, 32, 3)))
  assert logits.shape == (2, 3)


def test_load_pretrained_non_square_grid(tmp_path):
  path = tmp_path / 'p.npz'
  checkpoint.save(randomize(init(tiny_model(classifier='gap'))), path)
  model = tiny_model(classifier='gap')
  init_params = model.init(jax.random.key(0), jnp.zeros((1, 24, 32, 3)))['params']
  params = checkpoint.load_pretrained(pretrained_path=path, init_params=init_params,
                                      model_config={}, grid=(6, 8))
  assert params['Transformer']['posembed_input']['pos_embedding'].shape == (1, 48, 32)


def test_load_pretrained_rejects_a_different_model(tmp_path):
  path = tmp_path / 'p.npz'
  checkpoint.save(init(tiny_model()), path)
  wider = tiny_model(hidden_size=48)
  with pytest.raises(checkpoint.CheckpointError, match=r"embedding/kernel: checkpoint \(4, 4, 3, 32\), model \(4, 4, 3, 48\)"):
    checkpoint.load_pretrained(pretrained_path=path, init_params=init(wider), model_config={})
  deeper = tiny_model(transformer={**TINY['transformer'], 'num_layers': 3})
  with pytest.raises(checkpoint.CheckpointError, match='missing keys: Transformer/encoderblock_2'):
    checkpoint.load_pretrained(pretrained_path=path, init_params=init(deeper), model_config={})
