"""Swin: parameter counts, windows, timm oracle, checkpoints, transfer, a short training run."""

import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import helpers
from helpers import config_module
from helpers import count_params
from vit_jax import checkpoint
from vit_jax import models
from vit_jax.checkpoint import files
from vit_jax.models import loader
from vit_jax.models.swin import bias_tables
from vit_jax.models.swin import model as swin_model
from vit_jax.models.swin import pretrained
from vit_jax.models.swin import timm_keys as swin_keys

# timm's (and the paper's) parameter counts with 1000 classes.
PARAM_COUNTS = {'Swin-T': 28_288_354, 'Swin-S': 49_606_258, 'Swin-B': 87_768_224,
                'Swin-L': 196_532_476, 'Swin-B-384': 87_903_584}
TIMM_NAME = 'swin_tiny_patch4_window7_224'


def random_params(model, x, seed=0):
  # Norm scales spread wider than the weights (N(1, 0.1^2)), so the oracle tests see them.
  return helpers.random_params(model, x, seed, norm_scale=0.1)


def tiny(**overrides):
  """A two-stage Swin for 32x32 inputs: 8x8 tokens in 4x4 windows, then 4x4 in one window."""
  num_classes = overrides.pop('num_classes', 5)
  kw = dict(embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_size=4, patch_size=4)
  return models.get_model('Swin-T', num_classes=num_classes, **{**kw, **overrides})


@pytest.mark.parametrize('name', sorted(PARAM_COUNTS))
def test_parameter_counts_equal_timm(name):
  size = 384 if name.endswith('-384') else 224
  assert count_params(models.get_model(name, num_classes=1000), size) == PARAM_COUNTS[name]


def test_zoo_entries():
  for variant in 'TSBL':
    assert models.model_class(f'Swin-{variant}') is swin_model.SwinTransformer
    assert models.MODEL_CONFIGS[f'Swin-{variant}'].window_size == 7
    assert models.MODEL_CONFIGS[f'Swin-{variant}-384'].window_size == 12
  assert models.MODEL_CONFIGS['Swin-B'].num_heads == (4, 8, 16, 32)


def test_relative_position_index_matches_definition():
  wh, ww = 3, 4
  index = swin_model.relative_position_index((wh, ww))
  coords = [(i, j) for i in range(wh) for j in range(ww)]
  for a, (ia, ja) in enumerate(coords):
    for b, (ib, jb) in enumerate(coords):
      assert index[a, b] == (ia - ib + wh - 1) * (2 * ww - 1) + (ja - jb + ww - 1)
  assert index.max() == (2 * wh - 1) * (2 * ww - 1) - 1


def test_shifted_window_mask_separates_regions():
  mask = swin_model.shifted_window_mask((8, 8), (4, 4), (2, 2))
  assert mask.shape == (4, 16, 16) and set(np.unique(mask)) == {0., -100.}
  assert not mask[0].any()  # The top-left window holds one contiguous region.
  # Bottom-right window after the roll: four regions of 2x2 tokens, each attending to itself.
  region = np.array([[0, 0, 1, 1]] * 2 + [[2, 2, 3, 3]] * 2).reshape(-1)
  np.testing.assert_array_equal(mask[3] == 0, region[:, None] == region[None, :])


def test_window_and_shift_per_stage():
  assert swin_model.stage_window((56, 56), 7, shift=True) == ((7, 7), (3, 3))
  assert swin_model.stage_window((7, 7), 7, shift=True) == ((7, 7), (0, 0))
  assert swin_model.stage_window((7, 7), 12, shift=True) == ((7, 7), (0, 0))
  assert swin_model.stage_windows(384, 4, 4, 12) == [(12, 12)] * 4
  assert swin_model.stage_windows(224, 4, 4, 12)[-1] == (7, 7)


def test_patch_merging_channel_order():
  x = jnp.arange(16.).reshape(1, 4, 4, 1)
  variables = swin_model.PatchMerging().init(jax.random.key(0), x)
  _, state = swin_model.PatchMerging().apply(
      variables, x, capture_intermediates=lambda mdl, _: isinstance(mdl, nn.LayerNorm))
  merged = state['intermediates']['norm']['__call__'][0]
  # Inputs of the norm at output (0, 0): x[0,0], x[1,0], x[0,1], x[1,1] -> values 0, 4, 1, 5.
  raw = np.array([0., 4., 1., 5.])
  np.testing.assert_allclose(merged[0, 0, 0], (raw - raw.mean()) / np.sqrt(raw.var() + 1e-5),
                             atol=1e-5)


def test_non_square_input_and_window():
  model = tiny(window_size=(2, 4))
  x = jax.random.normal(jax.random.key(0), (2, 16, 32, 3))
  params = random_params(model, x)
  table = params['layers_0']['blocks_1']['attn']['relative_position_bias_table']
  assert table.shape == (3 * 7, 2)
  assert jax.jit(model.apply)({'params': params}, x).shape == (2, 5)
  with pytest.raises(ValueError, match='divisible by the window'):
    jax.eval_shape(tiny(window_size=3).init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  with pytest.raises(ValueError, match='divisible by patch_size'):
    jax.eval_shape(tiny().init, jax.random.key(0), jnp.zeros((1, 36, 32, 3)))


def test_features_dtypes_and_dropout():
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  features = tiny(num_classes=None)
  assert 'head' not in random_params(features, x)
  assert jax.eval_shape(features.init_with_output, jax.random.key(0), x)[0].shape == (2, 32)

  # Dropout and drop path: active only with train=True, driven by the 'dropout' rng.
  model = tiny(stochastic_depth=0.5, dropout_rate=0.1)
  params = random_params(model, x)
  apply = jax.jit(model.apply, static_argnames='train')
  logits = apply({'params': params}, x)
  np.testing.assert_array_equal(logits, apply({'params': params}, x))
  train = [apply({'params': params}, x, train=True, rngs={'dropout': jax.random.key(s)})
           for s in (0, 1)]
  assert not np.allclose(train[0], train[1]) and not np.allclose(train[0], logits)

  # Compute in bfloat16, parameters in float32, logits float32.
  model = tiny(dtype='bfloat16')
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
  logits_bf16 = jax.jit(model.apply)({'params': params}, x)
  assert logits_bf16.dtype == jnp.float32
  np.testing.assert_allclose(logits_bf16, logits, atol=0.05)
  assert not np.array_equal(logits_bf16, logits)


@pytest.mark.slow
def test_torch_is_not_imported():
  code = ('import sys, vit_jax.models, vit_jax.checkpoint, vit_jax.models.loader; '
          'assert "torch" not in sys.modules, "torch imported"')
  env = {**os.environ, 'PYTHONPATH': os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
  subprocess.run([sys.executable, '-c', code], check=True, env=env)


# ---------------------------------------------------------------------------------------------
# Oracle: timm's PyTorch Swin with random weights.


def randomize_timm(model, seed=0):
  """Random weights everywhere, tables included; returns the state dict as numpy."""
  import torch  # pylint: disable=g-import-not-at-top
  gen = torch.Generator().manual_seed(seed)
  state = {}
  for key, value in model.state_dict().items():
    noise = torch.randn(value.shape, generator=gen)
    if key.endswith('relative_position_bias_table'):
      value = noise  # Large enough to change the attention pattern.
    elif value.ndim == 1 and key.endswith('weight'):
      value = 1. + 0.1 * noise
    else:
      value = value + 0.02 * noise
    state[key] = value
  model.load_state_dict(state)
  return {key: value.numpy() for key, value in state.items()}


def torch_logits(model, images):
  import torch  # pylint: disable=g-import-not-at-top
  with torch.no_grad():
    return model(torch.from_numpy(np.array(images).transpose(0, 3, 1, 2))).numpy()


def official_layout(state_dict):
  """timm layout -> the official release's: merges close stages, `head`, buffers stored."""
  out = {}
  for key, value in state_dict.items():
    key = key.replace('head.fc.', 'head.')
    if '.downsample.' in key:
      stage = int(key.split('.')[1])
      key = key.replace(f'layers.{stage}.', f'layers.{stage - 1}.', 1)
    out[key] = value
  for stage, depth in enumerate((2, 2, 6, 2)):
    resolution = (56 >> stage,) * 2
    for block in range(depth):
      window, shift = swin_model.stage_window(resolution, 7, shift=block % 2 == 1)
      prefix = f'layers.{stage}.blocks.{block}.'
      out[prefix + 'attn.relative_position_index'] = swin_model.relative_position_index(window)
      if any(shift):
        out[prefix + 'attn_mask'] = swin_model.shifted_window_mask(resolution, window, shift)
  return out


@pytest.fixture(scope='module')
def swin_t_224(timm):
  model = timm.create_model(TIMM_NAME, pretrained=False, num_classes=10).eval()
  state_dict = randomize_timm(model)
  images = jax.random.normal(jax.random.key(1), (2, 224, 224, 3))
  return model, state_dict, images, torch_logits(model, images)


def test_logits_match_timm_224(timm, swin_t_224, tmp_path):
  _, state_dict, images, expected = swin_t_224
  model = models.get_model('Swin-T', num_classes=10)
  apply = jax.jit(lambda p, x: model.apply({'params': p}, x))
  params = swin_keys.from_state_dict(state_dict)
  logits = np.asarray(apply(params, images))
  assert np.abs(expected).max() > 0.3  # The comparison carries signal.
  np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)

  # The official release's layout, as a wrapped .pth with buffers: the same parameters.
  import torch  # pylint: disable=g-import-not-at-top
  official = official_layout(state_dict)
  assert len(official) == 190
  torch.save({'model': {k: torch.from_numpy(np.asarray(v)) for k, v in official.items()}},
             tmp_path / 'swin_tiny.pth')
  shapes = jax.eval_shape(model.init, jax.random.key(0), images[:1])['params']
  loaded = pretrained.fit_pretrained(files.read_state_dict(tmp_path / 'swin_tiny.pth'), shapes)
  jax.tree.map(np.testing.assert_array_equal, loaded, params)
  np.testing.assert_array_equal(apply(loaded, images), logits)

  # Saved in timm's layout, the file loads strictly into a fresh timm model: same logits.
  files.write_state_dict(swin_keys.to_state_dict(params), tmp_path / 'swin.safetensors')
  state = files.read_state_dict(tmp_path / 'swin.safetensors')
  fresh = timm.create_model(TIMM_NAME, pretrained=False, num_classes=10).eval()
  fresh.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
  np.testing.assert_allclose(torch_logits(fresh, images), expected, atol=1e-6, rtol=0)
  # A Swin .npz is our parameter tree; one holding a state dict (dotted keys) loads the same.
  checkpoint.save(params, tmp_path / 'swin.npz')
  np.savez(tmp_path / 'swin_state_dict.npz', **swin_keys.to_official_state_dict(params))
  for name in ('swin.npz', 'swin_state_dict.npz'):
    jax.tree.map(np.testing.assert_array_equal,
                 checkpoint.unflatten(loader.read_file(tmp_path / name).params), params)
  assert swin_keys.to_official_state_dict(params).keys() == {
      k for k in official if not k.endswith(('relative_position_index', 'attn_mask'))}


def test_logits_match_timm_256_window_8(timm, swin_t_224):
  """256 px, window 8: random weights made there, and 224/window-7 weights transferred there."""
  _, state_dict_224, _, _ = swin_t_224
  model = models.get_model('Swin-T', num_classes=10, window_size=8)
  apply = jax.jit(lambda p, x: model.apply({'params': p}, x))
  images = jax.random.normal(jax.random.key(2), (2, 256, 256, 3))
  shapes = jax.eval_shape(model.init, jax.random.key(0), images[:1])['params']

  direct = timm.create_model(TIMM_NAME, pretrained=False, num_classes=10, img_size=256,
                             window_size=8).eval()
  params = pretrained.fit_pretrained(randomize_timm(direct, seed=1), shapes)
  np.testing.assert_allclose(apply(params, images), torch_logits(direct, images), atol=1e-4,
                             rtol=0)

  # timm's own loader resizes the tables geometrically; `method='geometric'` must agree.
  import torch  # pylint: disable=g-import-not-at-top
  from timm.models import swin_transformer  # pylint: disable=g-import-not-at-top
  transferred = timm.create_model(TIMM_NAME, pretrained=False, num_classes=10, img_size=256,
                                  window_size=8).eval()
  torch_state = {k: torch.from_numpy(v) for k, v in state_dict_224.items()}
  transferred.load_state_dict(swin_transformer.checkpoint_filter_fn(torch_state, transferred))
  params = pretrained.fit_pretrained(state_dict_224, shapes, method='geometric')
  expected = torch_logits(transferred, images)
  assert np.abs(expected).max() > 0.3
  np.testing.assert_allclose(apply(params, images), expected, atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------------------
# Transfer to a new resolution / window.


def bicubic_reference(table, new_size):
  """The official loader's resize, verbatim in torch."""
  torch = pytest.importorskip('torch')
  positions, heads = table.shape
  side = int(positions**0.5)
  image = torch.from_numpy(table).permute(1, 0).reshape(1, heads, side, side)
  resized = torch.nn.functional.interpolate(image, size=(new_size, new_size), mode='bicubic',
                                            align_corners=False)
  return resized.reshape(heads, -1).permute(1, 0).numpy()


def test_transfer_224_window_7_to_384_window_12():
  source = models.get_model('Swin-T', num_classes=1000)
  shapes = jax.eval_shape(source.init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))['params']
  rng = np.random.default_rng(0)
  source_params = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32), shapes)
  target = models.get_model('Swin-T-384', num_classes=10)
  params = pretrained.fit_pretrained(source_params, jax.eval_shape(
      target.init, jax.random.key(0), jnp.zeros((1, 384, 384, 3)))['params'])

  old = source_params['layers_2']['blocks_3']['attn']['relative_position_bias_table']
  new = params['layers_2']['blocks_3']['attn']['relative_position_bias_table']
  assert old.shape == (169, 12) and new.shape == (529, 12)
  np.testing.assert_array_equal(params['head']['kernel'], 0.)  # 1000 -> 10 classes: reset.
  np.testing.assert_array_equal(params['norm']['scale'], source_params['norm']['scale'])
  logits = jax.jit(target.apply)({'params': params},
                                 jax.random.normal(jax.random.key(1), (1, 384, 384, 3)))
  assert logits.shape == (1, 10) and np.all(np.isfinite(logits))

  expected = bicubic_reference(np.asarray(old), 23)
  np.testing.assert_allclose(new, expected, atol=1e-5, rtol=0)


def test_table_resize_methods():
  table = np.random.default_rng(0).standard_normal((169, 3)).astype(np.float32)
  np.testing.assert_array_equal(
      bias_tables.resize_relative_position_bias_table(table, 7), table)
  flat = np.full((169, 2), 0.7, np.float32)
  for method in ('bicubic', 'geometric'):
    np.testing.assert_allclose(
        bias_tables.resize_relative_position_bias_table(flat, 12, method=method), 0.7,
        atol=1e-6)
  # Downsizing too (window 7 -> 4), against torch.
  np.testing.assert_allclose(bias_tables.resize_relative_position_bias_table(table, 4),
                             bicubic_reference(table, 7), atol=1e-5, rtol=0)
  non_square = np.zeros((3 * 7, 2), np.float32)
  with pytest.raises(ValueError, match='not of a square window'):
    bias_tables.resize_relative_position_bias_table(non_square, 4)
  assert bias_tables.resize_relative_position_bias_table(
      non_square, (3, 5), old_window=(2, 4)).shape == (5 * 9, 2)
  with pytest.raises(ValueError, match='Unknown resize method'):
    bias_tables.resize_relative_position_bias_table(table, 4, method='nearest')


def test_load_pretrained_heads_and_errors(tmp_path):
  model = tiny()
  x = jnp.zeros((1, 32, 32, 3))
  params = random_params(model, x)
  files.write_state_dict(swin_keys.to_state_dict(params), tmp_path / 'tiny.safetensors')
  same = pretrained.fit_pretrained(files.read_state_dict(tmp_path / 'tiny.safetensors'), params)
  jax.tree.map(np.testing.assert_array_equal, same, params)  # Same classes: head kept.
  reset = pretrained.fit_pretrained(params, params, reset_head=True)
  np.testing.assert_array_equal(reset['head']['kernel'], 0.)
  headless = jax.eval_shape(tiny(num_classes=None).init, jax.random.key(0), x)['params']
  assert 'head' not in pretrained.fit_pretrained(params, headless)

  state = swin_keys.to_state_dict(params)
  with pytest.raises(checkpoint.ConversionError,
                     match='Not a Swin state dict; unknown keys: pos_embed'):
    swin_keys.from_state_dict({**state, 'pos_embed': np.zeros((1, 4))})
  partial = {k: v for k, v in state.items() if not k.startswith('layers.1.blocks.1.mlp.fc2')}
  with pytest.raises(checkpoint.CheckpointError, match='missing keys: layers_1/blocks_1/mlp/fc2'):
    pretrained.fit_pretrained(partial, params)
  wider = random_params(tiny(embed_dim=32), x)
  with pytest.raises(checkpoint.CheckpointError, match=r'shape mismatch at patch_embed/norm/bias'):
    pretrained.fit_pretrained(wider, params)
  with pytest.raises(checkpoint.ConversionError,
                     match=r'Swin head.weight must be a \(out, in\) Linear weight'):
    swin_keys.from_state_dict({**state, 'norm.weight': state['norm.weight'],
                               'head.fc.weight': np.zeros(3)})
  with pytest.raises(FileNotFoundError):
    files.read_state_dict(tmp_path / 'nope.pth')
  (tmp_path / 'bad.safetensors').write_bytes(b'not a file')
  with pytest.raises(checkpoint.StateDictError, match='not a readable'):
    files.read_state_dict(tmp_path / 'bad.safetensors')


# ---------------------------------------------------------------------------------------------
# Training.


def test_short_adamw_run_lowers_loss():
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.standard_normal((16, 32, 32, 3)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 5, 16))
  model = tiny(stochastic_depth=0.1)
  params = jax.jit(model.init)(jax.random.key(0), images[:1])['params']
  tx = optax.adamw(2e-3, weight_decay=0.05)
  opt_state = tx.init(params)

  def loss_fn(params, rng):
    logits = model.apply({'params': params}, images, train=True, rngs={'dropout': rng})
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  @jax.jit
  def step(params, opt_state, rng):
    loss, grads = jax.value_and_grad(loss_fn)(params, rng)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  losses = []
  for i in range(15):
    params, opt_state, loss = step(params, opt_state, jax.random.key(i))
    losses.append(float(loss))
  assert losses[-1] < 0.6 * losses[0], losses


def test_swin_config_decays_only_kernels():
  from vit_jax.training import optim  # pylint: disable=g-import-not-at-top
  module = config_module('swin.py')
  for arg, drop_path in (('Swin-T', 0.2), ('Swin-S', 0.3), ('Swin-B', 0.5), ('cifar10', 0.1)):
    config = module.get_config(arg)
    assert config.model.stochastic_depth == drop_path
    model = models.get_model(config.model_name, num_classes=10, **config.model.to_dict())
    size = config.image_size
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
    flat = checkpoint.flatten(optim.decay_mask(shapes['params'],
                                               config.optimizer.decay_pattern))
    for path, decayed in flat.items():
      assert decayed == path.endswith('kernel'), path
    assert any(path.endswith('relative_position_bias_table') for path in flat)
  config = module.get_config('Swin-T')
  assert config.lr.base == 1e-3 and config.batch_size == 1024  # 5e-4 x 1024 / 512.
  assert config.lr.warmup_steps == 20 * (1_281_167 // 1024)
  assert config.optimizer.weight_decay == 0.05 and config.grad_clip_norm == 5.
