"""The models' output contract (`models.outputs`): `apply` gives one array in every mode, and the
pre-logits features are reachable by name for every family; no caller names a family's heads."""

import ast
import pathlib

import jax
import numpy as np
import pytest

from helpers import randomize
from helpers import random_images
from vit_jax import models
from vit_jax.models import outputs
from vit_jax.training import fewshot

_VIT = dict(patches={'size': (8, 8)}, hidden_size=32,
            transformer={'num_layers': 1, 'mlp_dim': 64, 'num_heads': 2})
CASES = {
    'vit_token': ('ViT-Ti_16', _VIT),
    'vit_gap': ('ViT-Ti_16', {**_VIT, 'classifier': 'gap'}),
    'vit_map': ('ViT-Ti_16', {**_VIT, 'classifier': 'map'}),
    # The `pre_logits` (Dense + tanh) layer of pre-training: the features come after it.
    'vit_representation': ('ViT-Ti_16', {**_VIT, 'representation_size': 24}),
    'hybrid': ('R+ViT-Ti_16', {'hidden_size': 32, 'transformer': _VIT['transformer']}),
    'swin': ('Swin-T', dict(embed_dim=16, depths=(2, 2), num_heads=(1, 2), window_size=2)),
    'bit': ('BiT-M-R50x1', dict(num_layers=(1, 1), width_factor=0.5)),
    'resnet': ('ResNet-18', dict(num_layers=(1,), width=8)),
    'cnn': ('CNN-CIFAR', dict(channels=(8, 16), hidden_size=32)),
}


def _variables(model, x):
  variables = dict(model.init(jax.random.key(0), x))
  variables['params'] = randomize(variables['params'])  # Zero-initialised heads carry nothing.
  return variables


@pytest.mark.parametrize('case', CASES)
def test_features_are_what_the_head_sees_for_every_family(case):
  zoo_name, fields = CASES[case]
  model = models.get_model(zoo_name, num_classes=5, **fields)
  x = random_images(2, 32)
  variables = _variables(model, x)
  logits = model.apply(variables, x, train=False)
  assert isinstance(logits, jax.Array) and logits.shape == (2, 5)
  # One answer in training too (ResNet updates its batch statistics there).
  train_logits, _ = model.apply(variables, x, train=True, rngs={'dropout': jax.random.key(1)},
                                mutable=[c for c in variables if c != 'params'])
  assert isinstance(train_logits, jax.Array) and train_logits.shape == (2, 5)

  same, named, state = models.apply_with_outputs(model, variables, x)
  np.testing.assert_array_equal(same, logits)
  assert set(named) == {outputs.FEATURES} and state == {}
  features = named[outputs.FEATURES]
  head = variables['params']['head']  # The test may know the head; callers may not.
  np.testing.assert_allclose(features @ head['kernel'] + head['bias'], logits, atol=1e-5)
  # The same features as the documented headless model, and as the few-shot probe extracts
  # (both compiled: XLA's fusions round differently from eager operations).
  headless = model.clone(num_classes=None)
  np.testing.assert_array_equal(features, headless.apply(variables, x, train=False))
  np.testing.assert_array_equal(fewshot.pre_logits_fn(model)(variables, x),
                                jax.jit(headless.apply)(variables, x))


def test_outputs_of_a_training_call_keep_the_updated_state_apart():
  model = models.get_model('ResNet-18', num_classes=5, **CASES['resnet'][1])
  x = random_images(2, 32)
  variables = _variables(model, x)
  logits, named, state = models.apply_with_outputs(model, variables, x, train=True,
                                                   mutable=['batch_stats'])
  expected, expected_state = model.apply(variables, x, train=True, mutable=['batch_stats'])
  np.testing.assert_array_equal(logits, expected)
  assert set(state) == {'batch_stats'} and set(named) == {outputs.FEATURES}
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(expected_state)):
    np.testing.assert_array_equal(a, b)


def test_a_model_without_pooled_features_says_so():
  model = models.get_model('ViT-Ti_16', num_classes=None, classifier='token_unpooled', **_VIT)
  x = random_images(1, 32)
  variables = model.init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="gives no 'features' output"):
    fewshot.pre_logits_fn(model)(variables, x)


_ROOT = pathlib.Path(__file__).resolve().parent.parent / 'vit_jax'
# Where parameter names belong: the model files, checkpoint reading, and the converter command.
_MAY_NAME_HEADS = ('models/', 'checkpoint/', 'tools/convert.py')


def test_no_caller_names_a_familys_heads():
  named = []
  for path in sorted(_ROOT.rglob('*.py')):
    relative = path.relative_to(_ROOT).as_posix()
    if relative.startswith(_MAY_NAME_HEADS):
      continue
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Constant) and node.value in ('head', 'head_dist'):
        named.append(f'{relative}:{node.lineno}: {node.value!r}')
  assert not named, 'Read model outputs by name (vit_jax.models.outputs):\n' + '\n'.join(named)
