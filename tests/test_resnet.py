"""BiT ResNetV2, BatchNorm ResNets and the CIFAR CNN: counts, BiT checkpoints, timm oracles."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import count_params
from helpers import init_key
from helpers import param_shapes
from helpers import random_images
from helpers import random_params
from helpers import randomize
from vit_jax import checkpoint
from vit_jax import models
from vit_jax.models.bit import model as bit_model
from vit_jax.models.cnn import model as cnn_model
from vit_jax.models.resnet import model as resnet_model


def jit_apply(model):
  return jax.jit(model.apply, static_argnames=('train', 'mutable'))


def to_torch_images(images):
  import torch  # pylint: disable=g-import-not-at-top
  return torch.from_numpy(np.array(images).transpose(0, 3, 1, 2))


# ---------------------------------------------------------------------------------------------
# Parameter counts.


@pytest.mark.parametrize('name,expected', [
    # torchvision's counts for the classic ResNets (1000 classes).
    ('ResNet-18', 11_689_512), ('ResNet-34', 21_797_672), ('ResNet-50', 25_557_032),
    ('BiT-M-R50x1', 25_549_352),
])
def test_parameter_counts(name, expected):
  assert count_params(models.get_model(name, num_classes=1000), 224) == expected


def test_bit_parameter_count_equals_timm(timm):
  ours = count_params(models.get_model('BiT-M-R50x1', num_classes=10), size=64)
  theirs = timm.create_model('resnetv2_50x1_bit', pretrained=False, num_classes=10)
  assert ours == sum(p.numel() for p in theirs.parameters())


def test_zoo_entries():
  for name in ('BiT-M-R50x1', 'BiT-S-R101x3', 'BiT-M-R152x4'):
    assert models.model_class(name) is bit_model.ResNetV2
  config = models.MODEL_CONFIGS['BiT-M-R152x4']
  assert tuple(config.num_layers) == (3, 8, 36, 3) and config.width_factor == 4
  assert models.model_class('ResNet-50') is resnet_model.ResNet
  assert models.model_class('CNN-CIFAR') is cnn_model.CifarCNN
  # R101x3: widths x3 reach the doc's 64·2^(s-1)·wf; 4x of that at the end of stage 4.
  shapes = param_shapes(models.get_model('BiT-M-R101x3', num_classes=None), size=32)
  assert shapes['block4']['unit03']['conv3']['kernel'].shape == (1, 1, 1536, 6144)
  assert len(shapes['block3']) == 23 and 'head' not in shapes


# ---------------------------------------------------------------------------------------------
# BiT: the model and its checkpoint layout.


def test_bit_structure_and_outputs():
  shapes = param_shapes(models.get_model('BiT-M-R50x1', num_classes=7, num_layers=(1, 2)), 32)
  assert set(shapes) == {'conv_root', 'block1', 'block2', 'gn_pre_head', 'head'}
  assert set(shapes['block2']['unit01']) == {'gn1', 'conv1', 'gn2', 'conv2', 'gn3', 'conv3',
                                             'conv_proj'}
  assert 'conv_proj' not in shapes['block2']['unit02']
  assert shapes['conv_root']['kernel'].shape == (7, 7, 3, 64)
  features = jax.eval_shape(
      models.get_model('BiT-M-R50x1', num_classes=None, num_layers=(1, 2)).apply,
      {'params': shapes}, jnp.zeros((2, 32, 32, 3)))
  assert features.shape == (2, 512)  # 4 x 128 after stage 2.

  model = models.get_model('BiT-M-R50x1', num_classes=7, num_layers=(1,))
  x = random_images(2, 32)
  variables = jax.jit(model.init)(init_key(), x)
  assert set(variables) == {'params'}
  assert not np.any(variables['params']['head']['kernel'])  # Zero-initialised for fine-tuning.
  params = randomize(variables['params'])
  bf16 = models.get_model('BiT-M-R50x1', num_classes=7, num_layers=(1,), dtype='bfloat16')
  out32, out16 = jit_apply(model)({'params': params}, x), jit_apply(bf16)({'params': params}, x)
  assert out32.shape == (2, 7) and out16.dtype == jnp.float32
  np.testing.assert_allclose(out16, out32, atol=0.05 * float(np.abs(out32).max()))


def test_bit_rejects_bad_input():
  model = bit_model.ResNetV2(num_classes=3, num_layers=())
  with pytest.raises(ValueError, match='num_layers'):
    model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  with pytest.raises(ValueError, match='NHWC'):
    bit_model.ResNetV2(num_classes=3).init(jax.random.key(0), jnp.zeros((32, 32, 3)))


def test_standardize_weight_matches_the_documented_formulas():
  w = np.random.default_rng(0).standard_normal((3, 3, 4, 5)).astype(np.float32) * 3 + 1
  mean = w.mean(axis=(0, 1, 2), keepdims=True)
  var = w.var(axis=(0, 1, 2), keepdims=True)
  bit = bit_model.standardize_weight(w, eps=1e-10, eps_in_sqrt=True)
  np.testing.assert_allclose(bit, (w - mean) / np.sqrt(var + 1e-10), rtol=1e-5, atol=1e-6)
  hybrid = bit_model.standardize_weight(w, eps=0.5, eps_in_sqrt=False)
  np.testing.assert_allclose(hybrid, (w - mean) / (np.sqrt(var) + 0.5), rtol=1e-5, atol=1e-6)


def test_bit_checkpoint_round_trip_and_tf_names(tmp_path):
  model = models.get_model('BiT-M-R50x1', num_classes=10)
  params = random_params(model, 64)
  path = tmp_path / 'bit.npz'
  checkpoint.save(params, path)
  with np.load(path) as data:
    keys = {key: data[key].shape for key in data.files}
  assert keys['resnet/root_block/standardized_conv2d/kernel'] == (7, 7, 3, 64)
  assert keys['resnet/block1/unit01/a/proj/standardized_conv2d/kernel'] == (1, 1, 64, 256)
  assert keys['resnet/block4/unit03/c/group_norm/gamma'] == (512,)  # Normalises conv c's input.
  assert keys['resnet/head/conv2d/kernel'] == (1, 1, 2048, 10)
  assert keys['resnet/group_norm/beta'] == (2048,)
  assert len(keys) == len(checkpoint.flatten(params))

  loaded = checkpoint.flatten(checkpoint.load(path))
  expected = checkpoint.flatten(params)
  assert set(loaded) == set(expected)
  for key, value in expected.items():
    assert loaded[key].dtype == value.dtype and np.array_equal(loaded[key], value), key


def test_bit_loads_numbered_conv_names_and_4d_groupnorm(tmp_path):
  model = models.get_model('BiT-M-R50x1', num_classes=10, num_layers=(2, 1))
  params = random_params(model, 64)
  plain = tmp_path / 'plain.npz'
  checkpoint.save(params, plain)
  with np.load(plain) as data:
    flat = {key: data[key] for key in data.files}
  renamed = {}
  for n, (key, value) in enumerate(sorted(flat.items())):
    key = key.replace('/standardized_conv2d/', f'/standardized_conv2d_{n}/')
    renamed[key] = value.reshape(1, 1, 1, -1) if 'group_norm' in key else value
  assert not any('/standardized_conv2d/' in key for key in renamed)
  variant = tmp_path / 'variant.npz'
  np.savez(variant, **renamed)
  loaded = checkpoint.flatten(checkpoint.load(variant))
  for key, value in checkpoint.flatten(params).items():
    assert np.array_equal(loaded[key], value), key

  renamed['resnet/block1/unit01/a/standardized_conv2d/kernel'] = renamed[
      next(k for k in renamed if k.startswith('resnet/block1/unit01/a/standardized_conv2d_'))]
  np.savez(variant, **renamed)
  with pytest.raises(checkpoint.CheckpointError, match='both hold block1/unit01/conv1/kernel'):
    checkpoint.load(variant)
  np.savez(variant, **{'resnet/block1/unit01/d/group_norm/gamma': np.ones(3), **flat})
  with pytest.raises(checkpoint.CheckpointError, match='resnet/block1/unit01/d/group_norm/gamma'):
    checkpoint.load(variant)


def test_bit_load_pretrained_resets_head_and_names_mismatches(tmp_path):
  source = models.get_model('BiT-M-R50x1', num_classes=21, num_layers=(1, 1))
  params = random_params(source, 64)
  path = tmp_path / 'bit.npz'
  checkpoint.save(params, path)

  target = models.get_model('BiT-M-R50x1', num_classes=5, num_layers=(1, 1))
  init = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), param_shapes(target, size=32))
  loaded = checkpoint.load_pretrained(pretrained_path=path, init_params=init,
                                      model_config=models.MODEL_CONFIGS['BiT-M-R50x1'])
  assert loaded['head']['kernel'].shape == (512, 5) and not np.any(loaded['head']['kernel'])
  np.testing.assert_array_equal(loaded['block2']['unit01']['conv_proj']['kernel'],
                                params['block2']['unit01']['conv_proj']['kernel'])

  wider = models.get_model('BiT-M-R50x1', num_classes=5, num_layers=(1, 1), width_factor=2)
  init = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), param_shapes(wider, size=32))
  with pytest.raises(checkpoint.CheckpointError,
                     match=r'conv_root/kernel: checkpoint \(7, 7, 3, 64\), model \(7, 7, 3, 128\)'):
    checkpoint.load_pretrained(pretrained_path=path, init_params=init,
                               model_config=models.MODEL_CONFIGS['BiT-M-R50x2'])


def test_bit_logits_match_timm(timm, tmp_path):
  """Our file in timm's own BiT loader; timm standardizes with eps 1e-8 (BiT: 1e-10)."""
  import torch  # pylint: disable=g-import-not-at-top
  model = models.get_model('BiT-M-R50x1', num_classes=10, conv_eps=1e-8)
  images = random_images(2, 64)
  params = random_params(model, 64)
  path = tmp_path / 'bit.npz'
  checkpoint.save(params, path)
  theirs = timm.create_model('resnetv2_50x1_bit', pretrained=False, num_classes=10).eval()
  theirs.load_pretrained(str(path))
  with torch.no_grad():
    expected = theirs(to_torch_images(images)).numpy()
  ours = np.asarray(jax.jit(model.apply)({'params': params}, images))
  assert np.abs(ours).max() > 0.1  # The comparison must carry signal.
  np.testing.assert_allclose(ours, expected, atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------------------
# BatchNorm ResNets and the CIFAR CNN.


def test_batchnorm_resnet_keeps_running_statistics():
  model = models.get_model('ResNet-18', num_classes=10, num_layers=(1, 1))
  x = jnp.asarray(random_images(4, 32) * 2 + 1)
  variables = jax.jit(model.init)(init_key(), x)
  apply = jit_apply(model)
  assert set(variables) == {'params', 'batch_stats'}
  stats = variables['batch_stats']
  assert set(stats['bn_root']) == {'mean', 'var'}
  assert set(stats['block2']['unit1']) == {'bn1', 'bn2', 'bn_proj'}
  assert not np.any(variables['params']['block1']['unit1']['bn2']['scale'])  # Zero-init gamma.

  # Training normalises with the batch and moves the running averages by momentum 0.9.
  _, updates = apply(variables, x, train=True, mutable=('batch_stats',))
  root_out = jax.lax.conv_general_dilated(
      x, variables['params']['conv_root']['kernel'], (2, 2), [(3, 3), (3, 3)],
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  np.testing.assert_allclose(updates['batch_stats']['bn_root']['mean'],
                             0.1 * root_out.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(updates['batch_stats']['bn_root']['var'],
                             0.9 + 0.1 * root_out.var(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)

  # Evaluation uses the running statistics: each example's logits ignore the rest of the batch
  # and move when the statistics do.
  trained = {'params': randomize(variables['params']), 'batch_stats': updates['batch_stats']}
  full = apply(trained, x)
  others = x.at[1:].set(random_images(3, 32, seed=2))
  np.testing.assert_allclose(apply(trained, others)[0], full[0], atol=1e-5)
  batch_normalised, _ = apply(trained, x, train=True, mutable=('batch_stats',))
  assert np.abs(full - batch_normalised).max() > 1e-3
  shifted = jax.tree.map(lambda s: s + 0.5, trained['batch_stats'])
  assert np.abs(apply({**trained, 'batch_stats': shifted}, x) - full).max() > 1e-3


def _timm_resnet_variables(theirs):
  """A timm/torchvision ResNet's state dict in our `ResNet` layout (params, batch_stats)."""
  params, stats = {}, {}

  def put(tree, path, value):
    *parents, leaf = path.split('/')
    for part in parents:
      tree = tree.setdefault(part, {})
    tree[leaf] = value

  renames = [('layer', 'block'), ('downsample.0', 'conv_proj'), ('downsample.1', 'bn_proj')]
  for key, value in theirs.state_dict().items():
    value = value.numpy()
    module, leaf = key.rsplit('.', 1)
    for old, new in renames:
      module = module.replace(old, new)
    parts = module.split('.')
    if parts[0].startswith('block'):  # block{s}.{u-1}.conv1 -> block{s}/unit{u}/conv1
      parts[1] = f'unit{int(parts[1]) + 1}'
    module = {'conv1': 'conv_root', 'bn1': 'bn_root', 'fc': 'head'}.get(module, '/'.join(parts))
    if leaf == 'weight' and value.ndim == 4:
      put(params, f'{module}/kernel', value.transpose(2, 3, 1, 0))
    elif leaf == 'weight' and value.ndim == 2:
      put(params, f'{module}/kernel', value.T)
    elif leaf == 'weight':
      put(params, f'{module}/scale', value)
    elif leaf == 'bias':
      put(params, f'{module}/bias', value)
    elif leaf in ('running_mean', 'running_var'):
      put(stats, f'{module}/{leaf[len("running_"):]}', value)
  return {'params': params, 'batch_stats': stats}


@pytest.mark.parametrize('ours,theirs', [('ResNet-18', 'resnet18'), ('ResNet-50', 'resnet50')])
def test_batchnorm_resnet_eval_logits_match_timm(timm, ours, theirs):
  """v1.5 structure, paddings and eval-mode BatchNorm against timm, with random running stats."""
  import torch  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  reference = timm.create_model(theirs, pretrained=False, num_classes=10)
  with torch.no_grad():
    for name, tensor in reference.state_dict().items():
      if tensor.is_floating_point():  # Everything random, running statistics included.
        tensor.copy_(torch.rand_like(tensor) + 0.5 if name.endswith(('running_var', '.weight'))
                     and tensor.ndim == 1 else tensor + 0.05 * torch.randn_like(tensor))
  reference.eval()
  images = random_images(2, 64)
  with torch.no_grad():
    expected = reference(to_torch_images(images)).numpy()
  model = models.get_model(ours, num_classes=10)
  variables = _timm_resnet_variables(reference)
  checkpoint.inspect_params(params=variables['params'], expected=param_shapes(model, 64))
  checkpoint.inspect_params(params=variables['batch_stats'],
                            expected=param_shapes(model, 64, 'batch_stats'))
  logits = np.asarray(jax.jit(model.apply)(variables, images))
  assert np.abs(logits).max() > 0.1
  np.testing.assert_allclose(logits, expected, atol=1e-4 * max(1., np.abs(expected).max()),
                             rtol=0)


def test_cifar_cnn():
  model = models.get_model('CNN-CIFAR', num_classes=10)
  x = jnp.zeros((2, 32, 32, 3))
  params = random_params(model, 32)
  assert {k: v['kernel'].shape for k, v in params.items()} == {
      'conv1': (3, 3, 3, 32), 'conv2': (3, 3, 32, 64), 'conv3': (3, 3, 64, 128),
      'dense': (4 * 4 * 128, 256), 'head': (256, 10)}
  assert model.apply({'params': params}, x).shape == (2, 10)
  features = models.get_model('CNN-CIFAR', num_classes=None).apply({'params': params}, x)
  assert features.shape == (2, 256)
  with pytest.raises(ValueError, match='not divisible by 8'):
    model.apply({'params': params}, jnp.zeros((2, 30, 30, 3)))
