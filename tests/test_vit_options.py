"""Register tokens, LayerScale and qk-norm against timm's VisionTransformer on the same weights."""

import jax
import numpy as np
import pytest

from helpers import randomize
from vit_jax import checkpoint
from vit_jax import models
from vit_jax.models.vit import architecture
from vit_jax.models.vit import timm_keys
from vit_jax.models.vit import torch_model


def _tiny(classifier='token', **options):
  transformer = dict(num_layers=2, mlp_dim=64, num_heads=2, dropout_rate=0.,
                     attention_dropout_rate=0., gelu_approximate=False)
  transformer.update({k: options.pop(k) for k in ('init_values', 'qk_norm') if k in options})
  return dict(num_classes=5, patches={'size': (8, 8)}, hidden_size=32, transformer=transformer,
              classifier=classifier, **options)


@pytest.mark.parametrize('classifier,options', [
    ('token', dict(reg_tokens=4)),
    ('gap', dict(reg_tokens=2)),
    ('map', dict(reg_tokens=1, qk_norm=True)),
    ('token', dict(init_values=1e-5)),
    ('token', dict(qk_norm=True)),
    ('token', dict(reg_tokens=4, init_values=0.1, qk_norm=True)),
])
def test_options_match_timm(timm, classifier, options):
  import torch  # pylint: disable=g-import-not-at-top
  config = _tiny(classifier, **options)
  model = models.VisionTransformer(**config)
  images = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  # Large noise so LayerScale and the norms' biases move the logits visibly.
  params = randomize(model.init(jax.random.key(0), images[:1])['params'], scale=0.5)
  flat = checkpoint.flatten(params)
  # The parameters our converter sees must be exactly the model's.
  assert architecture.config_from_params(flat).get('reg_tokens', 0) == options.get(
      'reg_tokens', 0)
  theirs = torch_model.timm_vit({**config, 'transformer': config['transformer']},
                           gelu_approximate=False, image_size=32)
  state = {k: torch.from_numpy(v) for k, v in timm_keys.to_timm(flat).items()}
  theirs.load_state_dict(state, strict=True)  # Every timm tensor has a counterpart in ours.
  with torch.no_grad():
    expected = theirs(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
  ours = np.asarray(model.apply({'params': params}, images))
  assert np.abs(ours).max() > 0.1
  np.testing.assert_allclose(ours, expected, atol=1e-4, rtol=0)
  # And back: timm's state dict -> ours is the identity on our parameters.
  back = timm_keys.from_timm({k: v.numpy() for k, v in theirs.state_dict().items()},
                                num_heads=2)
  assert sorted(back) == sorted(flat)
  for key, value in flat.items():
    np.testing.assert_array_equal(back[key], value)


def test_register_tokens_are_prefix_rows_in_posemb_resize(tmp_path):
  small = models.VisionTransformer(**_tiny(reg_tokens=3))
  params = randomize(small.init(jax.random.key(0), np.zeros((1, 32, 32, 3)))['params'])
  path = tmp_path / 'reg.npz'
  checkpoint.save(params, path)
  big = models.VisionTransformer(**_tiny(reg_tokens=3))
  init = big.init(jax.random.key(1), np.zeros((1, 48, 48, 3)))['params']
  loaded = checkpoint.load_pretrained(pretrained_path=path, init_params=init,
                                      model_config=_tiny(reg_tokens=3))
  old = np.asarray(params['Transformer']['posembed_input']['pos_embedding'])
  new = loaded['Transformer']['posembed_input']['pos_embedding']
  assert new.shape == (1, 4 + 36, 32)
  np.testing.assert_array_equal(new[:, :4], old[:, :4])  # cls + 3 registers kept as they are.
  expected = checkpoint.interpolate_posembed(old[:, 4:], (6, 6), num_prefix_tokens=0)
  np.testing.assert_allclose(new[:, 4:], expected, rtol=1e-6)


def test_register_tokens_and_distillation_is_an_error():
  model = models.VisionTransformer(**_tiny(reg_tokens=2, distilled=True))
  with pytest.raises(ValueError, match='reg_tokens'):
    model.init(jax.random.key(0), np.zeros((1, 32, 32, 3)))
