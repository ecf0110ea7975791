"""big_vision / SigLIP checkpoints: the exact file layout, read by timm's own loader and by ours."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import randomize
from vit_jax import checkpoint
from vit_jax import models
from vit_jax.checkpoint import big_vision

D, HEADS, MLP, LAYERS, PATCH, SIZE, CLASSES = 32, 2, 64, 2, 8, 32, 5


def _mha(prefix, lead=()):
  hd = D // HEADS
  keys = {f'{prefix}/{n}/kernel': lead + (D, HEADS, hd) for n in ('query', 'key', 'value')}
  keys.update({f'{prefix}/{n}/bias': lead + (HEADS, hd) for n in ('query', 'key', 'value')})
  keys.update({f'{prefix}/out/kernel': lead + (HEADS, hd, D), f'{prefix}/out/bias': lead + (D,)})
  return keys


def _mlp(prefix, lead=()):
  return {f'{prefix}/Dense_0/kernel': lead + (D, MLP), f'{prefix}/Dense_0/bias': lead + (MLP,),
          f'{prefix}/Dense_1/kernel': lead + (MLP, D), f'{prefix}/Dense_1/bias': lead + (D,)}


def _ln(prefix, lead=()):
  return {f'{prefix}/scale': lead + (D,), f'{prefix}/bias': lead + (D,)}


def big_vision_keys(scan):
  """Key names and shapes of big_vision's `models/vit.py` (pool_type 'map', posemb 'learn')."""
  keys = {'embedding/kernel': (PATCH, PATCH, 3, D), 'embedding/bias': (D,),
          'pos_embedding': (1, (SIZE // PATCH)**2, D), 'MAPHead_0/probe': (1, 1, D),
          'head/kernel': (D, CLASSES), 'head/bias': (CLASSES,)}
  blocks = [('Transformer/encoderblock', (LAYERS,))] if scan else [
      (f'Transformer/encoderblock_{i}', ()) for i in range(LAYERS)]
  for block, lead in blocks:
    keys.update(_ln(f'{block}/LayerNorm_0', lead))
    keys.update(_mha(f'{block}/MultiHeadDotProductAttention_0', lead))
    keys.update(_ln(f'{block}/LayerNorm_1', lead))
    keys.update(_mlp(f'{block}/MlpBlock_0', lead))
  keys.update(_ln('Transformer/encoder_norm'))
  keys.update(_mha('MAPHead_0/MultiHeadDotProductAttention_0'))
  keys.update(_ln('MAPHead_0/LayerNorm_0'))
  keys.update(_mlp('MAPHead_0/MlpBlock_0'))
  return keys


def _siglip_tower():
  return models.VisionTransformer(
      num_classes=CLASSES, patches={'size': (PATCH, PATCH)}, hidden_size=D, classifier='map',
      transformer=dict(num_layers=LAYERS, mlp_dim=MLP, num_heads=HEADS, dropout_rate=0.,
                       attention_dropout_rate=0.))


@pytest.mark.parametrize('scan,prefix', [(True, 'params/img/'), (False, 'params/img/'),
                                         (True, ''), (False, 'params/')])
def test_siglip_tower_matches_timm_loader(timm, tmp_path, scan, prefix):
  import torch  # pylint: disable=g-import-not-at-top
  model = _siglip_tower()
  images = np.random.default_rng(0).uniform(-1, 1, (2, SIZE, SIZE, 3)).astype(np.float32)
  params = randomize(model.init(jax.random.key(0), images[:1])['params'], scale=0.2)
  flat = big_vision.from_params(checkpoint.flatten(params), scan=scan, prefix=prefix)
  expected_keys = {prefix + k: v for k, v in big_vision_keys(scan).items()}
  assert {k: v.shape for k, v in flat.items()} == expected_keys
  if prefix == 'params/img/':  # A two-tower file: the text tower and logit scale/bias too.
    flat.update({'params/txt/Encoder_0/encoder_norm/scale': np.ones(D, np.float32),
                 'params/t': np.ones(1, np.float32), 'params/b': np.zeros(1, np.float32)})
  path = tmp_path / 'siglip.npz'
  np.savez(path, **flat)

  theirs = timm.models.vision_transformer.VisionTransformer(
      img_size=SIZE, patch_size=PATCH, embed_dim=D, depth=LAYERS, num_heads=HEADS,
      mlp_ratio=MLP / D, class_token=False, global_pool='map', num_classes=CLASSES,
      act_layer='gelu_tanh').eval()
  theirs.load_pretrained(str(path))
  with torch.no_grad():
    expected = theirs(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
  loaded = checkpoint.load(path)
  ours = np.asarray(model.apply({'params': loaded}, images))
  assert np.abs(ours).max() > 0.1
  np.testing.assert_allclose(ours, expected, atol=1e-4, rtol=0)
  np.testing.assert_allclose(ours, np.asarray(model.apply({'params': params}, images)),
                             atol=1e-6, rtol=0)


def test_load_pretrained_into_a_scanned_model(tmp_path):
  model = _siglip_tower()
  params = randomize(model.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))['params'])
  path = tmp_path / 'tower.npz'
  big_vision.save(params, path, scan=True, prefix='params/img/')
  scanned = _siglip_tower().clone(transformer={**_siglip_tower().transformer, 'scan': True})
  init = scanned.init(jax.random.key(1), jnp.zeros((1, SIZE, SIZE, 3)))['params']
  config = {'representation_size': None}
  loaded = checkpoint.load_pretrained(pretrained_path=path, init_params=init, model_config=config,
                                      reset_head=False)
  images = np.random.default_rng(1).uniform(-1, 1, (2, SIZE, SIZE, 3)).astype(np.float32)
  np.testing.assert_allclose(scanned.apply({'params': loaded}, images),
                             model.apply({'params': params}, images), atol=1e-5, rtol=0)


def test_class_token_gets_a_zero_position_row():
  model = _siglip_tower().clone(classifier='token')
  params = randomize(model.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))['params'])
  flat = checkpoint.flatten(params)
  with pytest.raises(checkpoint.CheckpointError, match='CLS'):
    big_vision.from_params(flat)
  posemb = np.asarray(flat['Transformer/posembed_input/pos_embedding']).copy()
  posemb[:, 0] = 0
  flat['Transformer/posembed_input/pos_embedding'] = posemb
  written = big_vision.from_params(flat, scan=False)
  assert written['pos_embedding'].shape == (1, 16, D)
  back = big_vision.to_params(written)
  np.testing.assert_array_equal(back['Transformer/posembed_input/pos_embedding'], posemb)


def test_unknown_block_child_is_named():
  flat = {'embedding/kernel': np.zeros((8, 8, 3, D)), 'pos_embedding': np.zeros((1, 16, D)),
          'Transformer/encoderblock/LayerNorm_7/scale': np.zeros((2, D))}
  with pytest.raises(checkpoint.CheckpointError, match='LayerNorm_7'):
    big_vision.to_params(flat)


def test_so400m_parameter_count_matches_timm(timm):
  import torch  # pylint: disable=g-import-not-at-top
  config = models.MODEL_CONFIGS['ViT-So400m_14']
  assert (config.hidden_size, config.transformer.num_layers, config.transformer.mlp_dim,
          config.transformer.num_heads) == (1152, 27, 4304, 16)
  model = models.get_model('ViT-So400m_14', num_classes=None)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))
  ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes['params']))
  with torch.device('meta'):
    theirs = timm.create_model('vit_so400m_patch14_siglip_224', pretrained=False, num_classes=0)
  assert ours == sum(p.numel() for p in theirs.parameters()) == 427_680_704


def test_a_size_the_patch_does_not_divide_runs_as_timm(timm, tmp_path):
  # SigLIP So400m/14 at 384 px in small: timm's ViT at 36 px with 8x8 patches (a 4x4 grid, the
  # last 4 rows and columns unused); our loader told the size gives its logits.
  import torch  # pylint: disable=g-import-not-at-top
  from vit_jax.tools import convert  # pylint: disable=g-import-not-at-top
  from vit_jax.models import loader  # pylint: disable=g-import-not-at-top
  theirs = timm.models.vision_transformer.VisionTransformer(
      img_size=36, patch_size=PATCH, embed_dim=D, depth=LAYERS, num_heads=HEADS, mlp_ratio=2.,
      num_classes=CLASSES, act_layer='gelu_tanh').eval()
  torch.manual_seed(0)
  with torch.no_grad():
    for p in theirs.parameters():
      p.add_(0.2 * torch.randn_like(p))
  torch.save(theirs.state_dict(), tmp_path / 'timm.pth')
  convert.convert(str(tmp_path / 'timm.pth'), str(tmp_path / 'ours.npz'), num_heads=HEADS)
  loaded = loader.load(tmp_path / 'ours.npz', image_size=36)
  assert loaded.image_size == (36, 36)
  x = np.random.default_rng(0).uniform(-1, 1, (2, 36, 36, 3)).astype(np.float32)
  with torch.no_grad():
    expected = theirs(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
  got = loaded.model.apply({'params': loaded.params}, x)
  assert np.abs(expected).max() > 0.1
  np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
