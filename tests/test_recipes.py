"""The configs and losses that claim a published recipe, checked against that recipe's values
(big_vision's configs and loss definitions) rather than against our own code."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import load_config
from vit_jax import models
from vit_jax import optim
from vit_jax import step as step_lib

# big_vision configs/vit_s16_i1k.py, field by field (its names on the left in comments).
BIG_VISION_S16_I1K = {
    'dataset': 'imagenet2012',                    # input.data.name
    'train_split': 'train[:99%]',                 # input.data.split
    'eval_split': 'train[99%:]',                  # evals.minival split
    'batch_size': 1024,                           # input.batch_size
    'shuffle_buffer': 250_000,                    # input.shuffle_buffer_size
    'num_epochs': 90.,                            # total_epochs
    'loss': 'softmax_xent',                       # loss
    'optimizer.name': 'adam',                     # optax_name scale_by_adam
    'optimizer.accumulator_dtype': 'bfloat16',    # optax.mu_dtype
    'optimizer.weight_decay': 1e-4,               # wd (decoupled: times schedule)
    'optimizer.decoupled_weight_decay': True,
    'lr.base': 1e-3,                              # lr
    'lr.warmup_steps': 10_000,                    # schedule.warmup_steps
    'lr.decay_type': 'cosine',                    # schedule.decay_type
    'grad_clip_norm': 1.0,                        # grad_clip_norm
    'model_name': 'ViT-S_16',                     # model.variant S/16
    'model.classifier': 'gap',                    # model.pool_type
    'model.posemb': 'sincos2d',                   # model.posemb
    'model.representation_size': 384,             # model.rep_size=True: the width
    'model.head_zero_init': True,                 # head_zeroinit default
    'mixup.mixup_alpha': 0.2,                     # mixup.p
    'mixup.cutmix_alpha': 0.,
}


def _get(config, dotted):
  for key in dotted.split('.'):
    config = config[key]
  return config


def test_bv_preset_is_big_vision_vit_s16_i1k():
  config = load_config('pretrain.py', 'ViT-S_16,imagenet2012,bv')
  got = {k: _get(config, k) for k in BIG_VISION_S16_I1K}
  assert got == BIG_VISION_S16_I1K
  # big_vision's train pp: inception crop, flip, randaug(2, 10), value_range(-1, 1).
  assert config.pp_train.split('|')[0] == 'inception_crop'
  assert 'flip_lr' in config.pp_train and 'value_range(-1, 1)' in config.pp_train
  assert 'randaug("rand-m10-n2")' in config.pp_train


@pytest.mark.parametrize('name,width', [('R50+ViT-L_32', 1024), ('R26+ViT-S_32', 384),
                                        ('R+ViT-Ti_16', 192), ('ViT-B_16', 768)])
def test_pretraining_representation_layer_is_the_transformer_width(name, width):
  config = load_config('pretrain.py', f'{name},imagenet2012')
  assert config.model.representation_size == width
  model = step_lib.create_model(config, 10)
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                             jnp.zeros((1, 224, 224, 3))))['params']
  assert params['pre_logits']['kernel'].shape[-1] == width


def _np_log_sigmoid(x):
  return -np.logaddexp(0., -x)


def test_sigmoid_xent_is_big_vision_formula():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(4, 7)).astype(np.float32) * 3
  labels = (rng.uniform(size=(4, 7)) < 0.3).astype(np.float32)
  # big_vision: nll = -sum(y log σ(z) + (1 - y) log σ(-z), -1).
  expected = -np.sum(labels * _np_log_sigmoid(logits) + (1 - labels) * _np_log_sigmoid(-logits),
                     -1)
  np.testing.assert_allclose(step_lib.sigmoid_cross_entropy(logits, labels), expected, rtol=1e-5)
  # softmax_xent: -sum(y log softmax(z)).
  shifted = logits - logits.max(-1, keepdims=True)
  log_softmax = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  np.testing.assert_allclose(step_lib.cross_entropy(logits, labels),
                             -np.sum(labels * log_softmax, -1), rtol=1e-5)
  with pytest.raises(ValueError, match='config.loss'):
    step_lib.loss_for({'loss': 'focal'})


def test_i21k_pretraining_starts_with_a_small_sigmoid_loss():
  config = load_config('pretrain.py', 'ViT-B_16,imagenet21k')
  assert config.loss == 'sigmoid_xent'
  assert config.model.head_bias_init == -10. and config.model.head_zero_init
  num_classes = 21843
  config.model.update(hidden_size=32, patches={'size': (16, 16)}, representation_size=32,
                      transformer={'num_layers': 1, 'mlp_dim': 64, 'num_heads': 2})
  model = step_lib.create_model(config, num_classes)
  images = jax.random.normal(jax.random.PRNGKey(1), (4, 32, 32, 3))
  variables = model.init(jax.random.PRNGKey(0), images)
  logits = np.asarray(model.apply(variables, images))
  np.testing.assert_allclose(logits, -10., atol=1e-6)  # Zero kernel, bias -10.
  labels = np.arange(4)
  loss = np.mean(step_lib.loss_for(config)(logits, jax.nn.one_hot(labels, num_classes)))
  # One positive at -log σ(-10) ≈ 10, K - 1 negatives at log(1 + e^-10) each.
  expected = -_np_log_sigmoid(-10.) + (num_classes - 1) * np.logaddexp(0., -10.)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  assert loss < 11.  # Against log(21843) ≈ 10 for softmax, but ~1e4 for a 0-bias sigmoid.
  # The same logits under a softmax: the bias cancels and the loss is log K.
  np.testing.assert_allclose(
      np.mean(step_lib.cross_entropy(logits, jax.nn.one_hot(labels, num_classes))),
      np.log(num_classes), rtol=1e-5)
