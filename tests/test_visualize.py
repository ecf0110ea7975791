"""Looking inside a ViT: sown attention weights, rollout, position-embedding similarity,
embedding filters, training curves, and the `python -m vit_jax.tools.visualize` commands on a photo."""

import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from vit_jax import checkpoint
from vit_jax import models
from vit_jax.tools import interpret
from vit_jax.tools import visualize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE, PATCH = 32, 8
GRID = SIZE // PATCH


def tiny_model(scan=False, classifier='token'):
  return models.get_model(
      'ViT-Ti_16', num_classes=10, patches={'size': (PATCH, PATCH)}, hidden_size=32,
      classifier=classifier, sow_weights=True,
      transformer={'num_layers': 3, 'mlp_dim': 64, 'num_heads': 4, 'scan': scan})


@functools.cache
def tiny_params(classifier='token'):
  """Random parameters from shapes alone; norm scales near 1, everything else ~N(0, 0.5)."""
  shapes = jax.eval_shape(lambda: tiny_model(classifier=classifier).init(
      jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3))))['params']
  rng = np.random.default_rng(0)

  def draw(path, leaf):
    value = 0.5 * rng.standard_normal(leaf.shape).astype(np.float32)
    return value + 1 if path[-1].key == 'scale' else value

  return jax.tree_util.tree_map_with_path(draw, shapes)


def photo(size=SIZE):
  skimage_data = pytest.importorskip('skimage.data')
  image = Image.fromarray(skimage_data.astronaut()).resize((size, size), Image.BILINEAR)
  return (np.asarray(image, np.float32)[None] - 127.5) / 127.5


def layer_norm(x, scale, bias, eps=1e-6):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean)**2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * scale + bias


def test_sown_weights_are_the_first_layers_softmax_attention():
  """Layer 0 recomputed in NumPy from the parameters: patches, [CLS], posemb, LN, q.k softmax."""
  params, x = tiny_params(), photo()
  _, weights = interpret.attention_weights(tiny_model(), params, x)
  assert weights.shape == (3, 1, 4, GRID * GRID + 1, GRID * GRID + 1)

  p = jax.tree.map(np.asarray, params)
  patches = x[0].reshape(GRID, PATCH, GRID, PATCH, 3).transpose(0, 2, 1, 3, 4).reshape(
      GRID * GRID, -1)
  tokens = patches @ p['embedding']['kernel'].reshape(-1, 32) + p['embedding']['bias']
  tokens = np.concatenate([p['cls'][0], tokens]) + p['Transformer']['posembed_input'][
      'pos_embedding'][0]
  block = p['Transformer']['encoderblock_0']
  y = layer_norm(tokens, block['LayerNorm_0']['scale'], block['LayerNorm_0']['bias'])
  mha = block['MultiHeadDotProductAttention_1']
  q = np.einsum('td,dhk->htk', y, mha['query']['kernel']) + mha['query']['bias'][:, None]
  k = np.einsum('td,dhk->htk', y, mha['key']['kernel']) + mha['key']['bias'][:, None]
  logits = q @ k.transpose(0, 2, 1) / np.sqrt(q.shape[-1])
  expected = np.exp(logits - logits.max(-1, keepdims=True))
  expected /= expected.sum(-1, keepdims=True)
  np.testing.assert_allclose(weights[0, 0], expected, atol=2e-5)


def test_scanned_encoder_sows_the_same_weights():
  params, x = tiny_params(), photo()
  _, plain = interpret.attention_weights(tiny_model(), params, x)
  stacked = checkpoint.unflatten(checkpoint.stack_encoder(checkpoint.flatten(params)))
  _, scanned = interpret.attention_weights(tiny_model(scan=True), stacked, x)
  np.testing.assert_allclose(scanned, plain, atol=1e-5)


def test_model_without_sow_weights_is_reported():
  model = models.get_model('ViT-Ti_16', num_classes=10, patches={'size': (PATCH, PATCH)},
                           hidden_size=32, transformer={'num_layers': 3, 'mlp_dim': 64,
                                                        'num_heads': 4})
  with pytest.raises(ValueError, match='sow_weights=True'):
    interpret.attention_weights(model, tiny_params(), photo())


def rollout_reference(weights):
  """Abnar & Zuidema, literally: per layer (mean over heads + I), rows normalised, then
  R_l = A_l R_(l-1), starting from R_0 = I, one example at a time."""
  layers, batch, _, tokens, _ = weights.shape
  out = []
  for b in range(batch):
    rollout = np.eye(tokens)
    for layer in range(layers):
      a = weights[layer, b].mean(axis=0) + np.eye(tokens)
      a = a / a.sum(axis=1, keepdims=True)
      rollout = a @ rollout
    out.append(rollout)
  return np.stack(out)


def test_rollout_rows_sum_to_one_and_match_the_numpy_reference():
  _, weights = interpret.attention_weights(tiny_model(), tiny_params(), photo())
  rollout = interpret.attention_rollout(weights)
  np.testing.assert_allclose(rollout.sum(axis=-1), 1., atol=1e-6)
  np.testing.assert_allclose(rollout, rollout_reference(weights.astype(np.float64)), atol=1e-12)
  # Rollout differs from the last layer alone: earlier layers matter.
  assert np.abs(rollout[0, 0] - weights[-1, 0].mean(0)[0]).max() > 1e-3
  heat = interpret.maps_from_attention(rollout[0], num_prefix=1)
  assert heat.shape == (GRID, GRID)
  np.testing.assert_allclose(heat.ravel(), rollout[0, 0, 1:])


def test_maps_without_class_token_average_the_query_rows():
  _, weights = interpret.attention_weights(tiny_model(classifier='gap'),
                                           tiny_params('gap'), photo())
  assert weights.shape[-1] == GRID * GRID
  heat = interpret.maps_from_attention(weights[-1, 0], num_prefix=0)
  np.testing.assert_allclose(heat, weights[-1, 0].mean(axis=1).reshape(4, GRID, GRID))


def test_posemb_similarity_and_embedding_components():
  posemb = np.asarray(tiny_params()['Transformer']['posembed_input']['pos_embedding'])
  similarity = interpret.posemb_similarity(posemb, num_prefix=1)
  assert similarity.shape == (GRID, GRID, GRID, GRID)
  flat = similarity.reshape(GRID * GRID, GRID * GRID)
  np.testing.assert_allclose(np.diag(flat), 1., atol=1e-12)
  np.testing.assert_allclose(flat, flat.T, atol=1e-12)
  rows = posemb[0, 1:]
  expected = rows[2] @ rows[5] / np.linalg.norm(rows[2]) / np.linalg.norm(rows[5])
  np.testing.assert_allclose(similarity[0, 2, 1, 1], expected, rtol=1e-6)

  kernel = np.asarray(tiny_params()['embedding']['kernel'])
  components, explained = interpret.embedding_components(kernel, count=6)
  assert components.shape == (6, PATCH, PATCH, 3)
  gram = components.reshape(6, -1) @ components.reshape(6, -1).T
  np.testing.assert_allclose(gram, np.eye(6), atol=1e-10)  # Orthonormal directions.
  assert np.all(np.diff(explained) <= 0) and 0 < explained.sum() <= 1


def test_training_curves_from_clu_event_files(tmp_path):
  """Scalars written the way the training loop writes them come back, and plot as one PNG."""
  metric_writers = pytest.importorskip('clu.metric_writers')
  writer = metric_writers.create_default_writer(str(tmp_path))
  writer.write_hparams({'lr': 0.1, 'model': 'ViT-Ti_16'})
  for step in range(1, 6):
    writer.write_scalars(step, {'train_loss': 2. / step, 'train_accuracy': step / 10,
                                'learning_rate': 0.01 * step})
  writer.write_scalars(5, {'test/accuracy': 0.6, 'fewshot/5shot': 0.4})
  writer.flush()
  scalars = visualize.read_scalars(str(tmp_path))
  assert set(scalars) == {'train_loss', 'train_accuracy', 'learning_rate', 'test/accuracy',
                          'fewshot/5shot'}
  steps, values = scalars['train_loss']
  np.testing.assert_array_equal(steps, [1, 2, 3, 4, 5])
  np.testing.assert_allclose(values, [2., 1., 2 / 3, .5, .4], rtol=1e-6)
  path = visualize.plot_curves(scalars, str(tmp_path / 'curves.png'))
  assert Image.open(path).size[0] > 800  # Three panels side by side.
  with pytest.raises(FileNotFoundError, match='No TensorBoard event files'):
    visualize.read_scalars(str(tmp_path / 'empty'))


def assert_real_png(path, min_size=200):
  with Image.open(path) as image:
    assert image.format == 'PNG'
    assert min(image.size) >= min_size
    pixels = np.asarray(image.convert('RGB'))
  assert pixels.std() > 10  # A figure, not a blank canvas.


@pytest.mark.slow
def test_commands_write_pngs_for_a_real_photo(tmp_path):
  skimage_data = pytest.importorskip('skimage.data')
  Image.fromarray(skimage_data.astronaut()).save(tmp_path / 'astronaut.png')
  checkpoint.save(tiny_params(), tmp_path / 'tiny.npz')
  env = {**os.environ, 'PYTHONPATH': ROOT + os.pathsep + os.environ.get('PYTHONPATH', '')}
  runs = {}
  for command in ('attention', 'rollout', 'posemb'):
    runs[command] = subprocess.Popen(
        [sys.executable, '-m', 'vit_jax.tools.visualize', command,
         f'--checkpoint={tmp_path / "tiny.npz"}', f'--image={tmp_path / "astronaut.png"}',
         f'--output={tmp_path / command}.png'],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  for command, run in runs.items():
    out, err = run.communicate(timeout=300)
    assert run.returncode == 0, err[-2000:]
    assert f'Wrote {tmp_path / command}.png' in out
    assert_real_png(tmp_path / f'{command}.png')


def test_figures_of_filters_and_bad_input(tmp_path):
  kernel = np.asarray(tiny_params()['embedding']['kernel'])
  components, explained = interpret.embedding_components(kernel, count=8)
  assert_real_png(visualize.plot_filters(components, explained, str(tmp_path / 'f.png')), 150)
  with pytest.raises(ValueError, match='not a square grid'):
    interpret.maps_from_attention(np.ones((1, 11, 11)) / 11, num_prefix=1)
  with pytest.raises(ValueError, match='layers, batch, heads'):
    interpret.attention_rollout(np.ones((2, 5, 5)))
