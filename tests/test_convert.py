"""Checkpoint conversion: exact round trips through timm and HF files, and the torch models
(timm, transformers) loading the converted weights agree with ours."""

import functools
import importlib
import json

import jax
import numpy as np
import pytest

from helpers import random_images
from helpers import random_params
from vit_jax import checkpoint
from vit_jax import models
from vit_jax.models.vit import hf_keys
from vit_jax.models.vit import timm_keys
from vit_jax.models.vit import torch_model
from vit_jax.tools import convert

SIZE = 32
TINY = dict(patches={'size': (8, 8)}, hidden_size=32,
            transformer={'num_layers': 2, 'mlp_dim': 64, 'num_heads': 4})


def tiny_model(num_classes=10, gelu_approximate=True, **overrides):
  fields = {**TINY, **overrides}
  fields['transformer'] = {**TINY['transformer'], 'gelu_approximate': gelu_approximate}
  return models.get_model('ViT-Ti_16', num_classes=num_classes, **fields)


@functools.cache
def _random_params(num_classes, classifier, representation_size, distilled):
  """Random values of every parameter, from shapes alone (no slow eager init): norm scales near
  1, everything else (heads and biases too) clearly non-zero."""
  model = tiny_model(num_classes, classifier=classifier, representation_size=representation_size,
                     distilled=distilled)
  return random_params(model, SIZE, scale=0.3)


def tiny_params(model):
  return _random_params(model.num_classes, model.classifier, model.representation_size,
                        model.distilled)


def apply(model, params, x):
  return np.asarray(jax.jit(model.apply)({'params': params}, x))


def images(batch=2, size=SIZE, seed=1):
  return random_images(batch, size, seed)


def to_torch(x):
  import torch  # pylint: disable=g-import-not-at-top
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


@pytest.fixture(scope='module')
def transformers():
  """transformers, or a clean skip where it or torch is not installed."""
  from vit_jax.models.timm_import import import_transformers  # pylint: disable=g-import-not-at-top
  try:
    importlib.import_module('torch')
    return import_transformers()
  except ImportError as e:
    pytest.skip(f'transformers oracle unavailable: {e}')


def assert_same_params(a, b):
  a, b = checkpoint.flatten(a), checkpoint.flatten(b)
  assert sorted(a) == sorted(b)
  for key in a:
    assert np.asarray(a[key]).dtype == np.asarray(b[key]).dtype, key
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


# ---------------------------------------------------------------------------------------------
# Round trips.


@pytest.mark.parametrize('target', ['vit.safetensors', 'vit.pth', 'hf_vit'])
def test_round_trip_through_torch_formats_is_bit_exact(tmp_path, target):
  if target.endswith('.pth'):
    pytest.importorskip('torch')
  params = tiny_params(tiny_model())
  checkpoint.save(params, tmp_path / 'ours.npz')
  _, fmt = convert.convert(str(tmp_path / 'ours.npz'), str(tmp_path / target))
  assert fmt == ('hf' if target == 'hf_vit' else 'timm')
  # timm files do not record the heads (HF configs do).
  loaded, back_fmt = convert.convert(str(tmp_path / target), str(tmp_path / 'back.npz'),
                                     num_heads=None if fmt == 'hf' else 4)
  assert (loaded.format, back_fmt) == (fmt, 'npz')
  assert_same_params(checkpoint.load(tmp_path / 'back.npz'), params)


def test_round_trip_of_gap_and_map_models_through_timm(tmp_path):
  for classifier in ('gap', 'map'):
    params = checkpoint.flatten(tiny_params(tiny_model(classifier=classifier)))
    state = timm_keys.to_timm(params)
    assert ('cls_token' in state) is False
    assert ('attn_pool.kv.weight' in state) == (classifier == 'map')
    assert_same_params(timm_keys.from_timm(state, num_heads=4), params)


def test_hf_feature_extractor_round_trip_keeps_the_representation_layer(tmp_path):
  params = checkpoint.flatten(tiny_params(tiny_model(num_classes=None, representation_size=24)))
  state, config = hf_keys.to_hf(params)
  assert config['architectures'] == ['ViTModel'] and config['pooler_output_size'] == 24
  assert 'pooler.dense.weight' in state and not any(k.startswith('vit.') for k in state)
  assert_same_params(hf_keys.from_hf(state, config), params)


def test_transformers_v5_in_memory_names_are_read():
  params = checkpoint.flatten(tiny_params(tiny_model()))
  state, config = hf_keys.to_hf(params)
  renamed = {k.replace('encoder.layer.', 'layers.')
             .replace('attention.attention.query', 'attention.q_proj')
             .replace('attention.attention.key', 'attention.k_proj')
             .replace('attention.attention.value', 'attention.v_proj')
             .replace('attention.output.dense', 'attention.o_proj')
             .replace('intermediate.dense', 'mlp.fc1')
             .replace('output.dense', 'mlp.fc2'): v for k, v in state.items()}
  assert 'vit.layers.0.attention.q_proj.weight' in renamed
  assert_same_params(hf_keys.from_hf(renamed, config), params)


# ---------------------------------------------------------------------------------------------
# timm: its own `.npz` loader, and its models' logits.


def timm_vit(timm, gelu_approximate=True, **kwargs):
  return timm.models.vision_transformer.VisionTransformer(
      img_size=SIZE, patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.,
      num_classes=10, act_layer='gelu_tanh' if gelu_approximate else 'gelu', **kwargs).eval()


def timm_small_hybrid(timm):
  """A ViT on a two-stage (1, 1) post-activation ResNet: timm's hybrid parts, public API."""
  from timm.layers import HybridEmbed, StdConv2dSame  # pylint: disable=g-import-not-at-top
  backbone = timm.models.resnetv2.ResNetV2(
      layers=(1, 1), num_classes=0, global_pool='', preact=False, stem_type='same',
      conv_layer=functools.partial(StdConv2dSame, eps=1e-8))
  return timm.models.vision_transformer.VisionTransformer(
      img_size=SIZE, patch_size=1, embed_dim=32, depth=1, num_heads=4, mlp_ratio=2.,
      num_classes=10, act_layer='gelu_tanh',
      embed_layer=functools.partial(HybridEmbed, backbone=backbone)).eval()


def timm_state(model):
  return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def test_our_timm_mapping_equals_timms_own_npz_loader(timm, tmp_path):
  """timm loads the original `.npz` files itself: its result must equal our conversion."""
  for make in (timm_vit, timm_small_hybrid):
    source = make(timm)
    theirs = timm_state(source)
    ours = timm_keys.from_timm(theirs, num_heads=4)
    if make is timm_small_hybrid:
      assert 'block2/unit1/conv_proj/kernel' in ours and 'gn_root/scale' in ours
    checkpoint.save(checkpoint.unflatten(ours), tmp_path / 'from_timm.npz')
    target = make(timm)
    target.load_pretrained(str(tmp_path / 'from_timm.npz'))
    reloaded = timm_state(target)
    assert sorted(reloaded) == sorted(theirs)
    for key in theirs:
      np.testing.assert_array_equal(reloaded[key], theirs[key], err_msg=key)
    converted = timm_keys.to_timm(checkpoint.flatten(checkpoint.load(tmp_path /
                                                                        'from_timm.npz')))
    for key in theirs:
      np.testing.assert_array_equal(converted[key], theirs[key], err_msg=key)


@pytest.mark.parametrize('classifier,kwargs', [
    ('token', {}),
    ('gap', dict(class_token=False, global_pool='avg', fc_norm=False)),
])
def test_timm_logits_equal_ours_on_converted_weights(timm, tmp_path, classifier, kwargs):
  import torch  # pylint: disable=g-import-not-at-top
  model = tiny_model(classifier=classifier)
  params = tiny_params(model)
  checkpoint.save(params, tmp_path / 'ours.npz')
  convert.convert(str(tmp_path / 'ours.npz'), str(tmp_path / 'timm.safetensors'))
  theirs = timm_vit(timm, **kwargs)
  theirs.load_state_dict({k: torch.from_numpy(v) for k, v in checkpoint.read_state_dict(
      tmp_path / 'timm.safetensors').items()}, strict=True)
  x = images()
  with torch.no_grad():
    expected = theirs(to_torch(x)).numpy()
  got = apply(model, params, x)
  assert np.abs(got).max() > 0.1  # The comparison carries signal.
  np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_timm_weights_converted_to_ours_give_timms_logits(timm, tmp_path):
  import torch  # pylint: disable=g-import-not-at-top
  source = timm_vit(timm, gelu_approximate=False)
  torch.manual_seed(0)
  with torch.no_grad():
    for p in source.parameters():
      p.add_(0.2 * torch.randn_like(p))
  torch.save(source.state_dict(), tmp_path / 'timm.pth')
  loaded, _ = convert.convert(str(tmp_path / 'timm.pth'), str(tmp_path / 'ours.npz'),
                              num_heads=4)
  assert loaded.format == 'timm'
  x = images()
  with torch.no_grad():
    expected = source(to_torch(x)).numpy()
  model = tiny_model(gelu_approximate=False)
  got = apply(model, checkpoint.load(tmp_path / 'ours.npz'), x)
  np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_hybrid_logits_equal_timms_with_its_conventions(timm, tmp_path):
  import torch  # pylint: disable=g-import-not-at-top
  source = timm_small_hybrid(timm)
  torch.manual_seed(0)
  with torch.no_grad():
    for p in source.parameters():
      p.add_(0.05 * torch.randn_like(p))
  params = checkpoint.unflatten(timm_keys.from_timm(timm_state(source), num_heads=4))
  model = models.VisionTransformer(
      num_classes=10, patches={'size': (1, 1)}, hidden_size=32,
      transformer={'num_layers': 1, 'mlp_dim': 64, 'num_heads': 4},
      resnet={'num_layers': (1, 1), 'width_factor': 1, **torch_model.TIMM_HYBRID_EPS})
  x = images()
  with torch.no_grad():
    expected = source(to_torch(x)).numpy()
  got = apply(model, params, x)
  assert np.abs(got).max() > 0.1
  np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------------------
# Hugging Face transformers.


def test_transformers_loads_our_folder_with_equal_logits(transformers, tmp_path):
  import torch  # pylint: disable=g-import-not-at-top
  model = tiny_model()
  params = tiny_params(model)
  checkpoint.save(params, tmp_path / 'ours.npz')
  convert.convert(str(tmp_path / 'ours.npz'), str(tmp_path / 'hf'))
  config = json.loads((tmp_path / 'hf' / 'config.json').read_text())
  assert config['hidden_act'] == 'gelu_pytorch_tanh' and config['image_size'] == SIZE
  assert config['id2label']['3'] == 'cat'  # 10 classes: CIFAR-10 names.
  theirs, info = transformers.ViTForImageClassification.from_pretrained(
      tmp_path / 'hf', output_loading_info=True)
  assert not info['missing_keys'] and not info['unexpected_keys'], info
  x = images()
  with torch.no_grad():
    expected = theirs.eval()(pixel_values=to_torch(x)).logits.numpy()
  got = apply(model, params, x)
  assert np.abs(got).max() > 0.1
  np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
  # What `convert --check` reports for the same pair.
  from vit_jax.tools import parity  # pylint: disable=g-import-not-at-top
  delta = parity.max_logit_difference(checkpoint.flatten(params), str(tmp_path / 'hf'), 'hf')
  assert 0 < delta < 1e-4


def test_folder_written_by_transformers_converts_to_equal_logits(transformers, tmp_path):
  import torch  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  config = transformers.ViTConfig(
      hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
      image_size=SIZE, patch_size=8, num_labels=7, layer_norm_eps=1e-6, hidden_act='gelu')
  source = transformers.ViTForImageClassification(config).eval()
  with torch.no_grad():
    for p in source.parameters():
      p.add_(0.2 * torch.randn_like(p))
  source.save_pretrained(tmp_path / 'hf')
  loaded, _ = convert.convert(str(tmp_path / 'hf'), str(tmp_path / 'ours.npz'))
  assert loaded.gelu_approximate is False  # Read from the config's hidden_act.
  x = images()
  with torch.no_grad():
    expected = source(pixel_values=to_torch(x)).logits.numpy()
  model = tiny_model(num_classes=7, gelu_approximate=False)
  got = apply(model, checkpoint.load(tmp_path / 'ours.npz'), x)
  np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------------------
# What cannot be converted, and bad input.


def test_unrepresentable_models_are_refused_with_the_reason():
  with_pre_logits = checkpoint.flatten(tiny_params(tiny_model(representation_size=24)))
  with pytest.raises(checkpoint.ConversionError, match='representation layer'):
    timm_keys.to_timm(with_pre_logits)
  with pytest.raises(checkpoint.ConversionError, match='drop_head'):
    hf_keys.to_hf(with_pre_logits)
  gap = checkpoint.flatten(tiny_params(tiny_model(classifier='gap')))
  with pytest.raises(checkpoint.ConversionError, match='class token'):
    hf_keys.to_hf(gap)
  hybrid = {**checkpoint.flatten(tiny_params(tiny_model())),
            'conv_root/kernel': np.zeros((7, 7, 3, 64), np.float32)}
  with pytest.raises(checkpoint.ConversionError, match='ViTHybrid'):
    hf_keys.to_hf(hybrid)


def test_unknown_timm_keys_are_named():
  state = timm_keys.to_timm(checkpoint.flatten(tiny_params(tiny_model())))
  state['norm_pre.weight'] = np.ones(32, np.float32)  # CLIP's pre-norm: not in our ViT.
  with pytest.raises(checkpoint.ConversionError, match=r'norm_pre\.weight'):
    timm_keys.from_timm(state, num_heads=4)


def test_bad_paths_and_files_give_clear_errors(tmp_path):
  with pytest.raises(checkpoint.ConversionError, match='Cannot tell the format'):
    convert.read(tmp_path / 'weights.txt')
  with pytest.raises(FileNotFoundError):
    convert.read(tmp_path / 'missing.safetensors')
  (tmp_path / 'junk.safetensors').write_bytes(b'not a safetensors file')
  with pytest.raises(checkpoint.StateDictError, match='junk.safetensors'):
    convert.read(tmp_path / 'junk.safetensors')
  params = tiny_params(tiny_model())
  checkpoint.save(params, tmp_path / 'ours.npz')
  convert.convert(str(tmp_path / 'ours.npz'), str(tmp_path / 'out.safetensors'))
  with pytest.raises(checkpoint.ConversionError, match='exists'):
    convert.convert(str(tmp_path / 'ours.npz'), str(tmp_path / 'out.safetensors'))
  with pytest.raises(checkpoint.ConversionError, match='num_heads'):
    convert.read(tmp_path / 'out.safetensors')  # Width 32 is not a zoo width: heads unknown.


@pytest.mark.slow
def test_tools_import_without_torch_transformers_tensorflow_or_orbax():
  import os  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  code = ('import sys, runpy; import vit_jax.tools.convert, vit_jax.tools.classify, '
          'vit_jax.tools.visualize, vit_jax.tools.fewshot, vit_jax.tools.parity; '
          'from vit_jax.models import formats, loader; '
          'runpy.run_path("scripts/benchmark.py", run_name="benchmark"); '
          'print([m for m in ("torch", "transformers", "tensorflow", "orbax") if m in sys.modules])')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True,
                       cwd=root, env={**os.environ, 'PYTHONPATH': root})
  assert out.stdout.strip().splitlines()[-1] == '[]'


def test_swin_goes_through_its_key_map_and_matches_timm(timm, tmp_path):
  """A timm Swin state dict converts to our Swin and back unchanged; --check's numbers agree."""
  import torch  # pylint: disable=g-import-not-at-top
  from vit_jax.tools import parity  # pylint: disable=g-import-not-at-top
  source = timm.models.swin_transformer.SwinTransformer(
      img_size=16, patch_size=2, embed_dim=16, depths=(1, 1), num_heads=(1, 2), window_size=4,
      num_classes=5).eval()
  torch.manual_seed(0)
  with torch.no_grad():
    for p in source.parameters():
      p.add_(0.1 * torch.randn_like(p))
  checkpoint.write_state_dict(timm_state(source), tmp_path / 'swin.safetensors')
  loaded, _ = convert.convert(str(tmp_path / 'swin.safetensors'), str(tmp_path / 'ours.npz'))
  assert loaded.format == 'timm'
  assert 'layers_1/blocks_0/attn/relative_position_bias_table' in loaded.params
  convert.convert(str(tmp_path / 'ours.npz'), str(tmp_path / 'back.safetensors'))
  back = checkpoint.read_state_dict(tmp_path / 'back.safetensors')
  original = timm_state(source)
  assert sorted(back) == sorted(original)
  for key in original:
    np.testing.assert_array_equal(back[key], original[key], err_msg=key)
  delta = parity.max_logit_difference(loaded.params, str(tmp_path / 'swin.safetensors'), 'timm')
  assert 0 < delta < 1e-4


def test_deit_distilled_model_converts_to_timms_distilled_vit(timm, tmp_path):
  from vit_jax.tools import parity  # pylint: disable=g-import-not-at-top
  params = checkpoint.flatten(tiny_params(tiny_model(distilled=True)))
  assert 'dist' in params and 'head_dist/kernel' in params
  checkpoint.save(checkpoint.unflatten(params), tmp_path / 'deit.npz')
  convert.convert(str(tmp_path / 'deit.npz'), str(tmp_path / 'deit.safetensors'))
  state = checkpoint.read_state_dict(tmp_path / 'deit.safetensors')
  assert state['pos_embed'].shape[1] == 2 + (SIZE // 8)**2 and 'head_dist.weight' in state
  assert_same_params(timm_keys.from_timm(state, num_heads=4), params)
  delta = parity.max_logit_difference(params, str(tmp_path / 'deit.safetensors'), 'timm')
  assert 0 < delta < 1e-4  # timm's VisionTransformerDistilled averages both heads, as ours.
  with pytest.raises(checkpoint.ConversionError, match='distillation token'):
    hf_keys.to_hf(params)
