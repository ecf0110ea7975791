"""Optimizers and learning-rate schedules against hand-computed updates."""

import jax
import jax.numpy as jnp
import numpy as np

import tiny_config
from vit_jax.training import base_config
from vit_jax.training import optim


def _quadratic_params():
  return {'dense': {'kernel': jnp.array([[1.0, -2.0], [0.5, 3.0]]), 'bias': jnp.array([0.3, -0.1])}}


def _grads(params):
  # Gradient of sum(kernel**2) + sum(bias**3): easy to write by hand.
  return {'dense': {'kernel': 2 * params['dense']['kernel'],
                    'bias': 3 * params['dense']['bias']**2}}


def _optimizer_config(**kw):
  config = tiny_config.get_config()
  config.total_steps = 10
  config.update(kw)
  return config


def test_finetune_sgd_matches_hand_computed_updates():
  config = _optimizer_config(grad_clip_norm=1.0)
  config.optimizer.update(dict(name='sgd', momentum=0.9, accumulator_dtype='', weight_decay=0.0))
  config.lr.update(dict(base=0.03, warmup_steps=4, decay_type='cosine'))
  tx, _ = optim.make_optimizer(config, _quadratic_params())
  params = _quadratic_params()
  state = tx.init(params)
  p = {k: np.asarray(v, np.float64) for k, v in params['dense'].items()}
  momentum = {k: np.zeros_like(v) for k, v in p.items()}
  for step in (1, 2):
    grads = _grads(params)
    g = {k: np.asarray(v, np.float64) for k, v in grads['dense'].items()}
    norm = np.sqrt(sum((v**2).sum() for v in g.values()))
    g = {k: v * min(1., 1. / norm) for k, v in g.items()}
    lr = 0.03 * 0.5 * (1 + np.cos(np.pi * 0)) * min(1., step / 4)  # Still warming up.
    for k in p:
      momentum[k] = 0.9 * momentum[k] + g[k]
      p[k] = p[k] - lr * momentum[k]
    updates, state = tx.update(grads, state, params)
    params = jax.tree.map(lambda a, u: a + u, params, updates)
    for k in p:
      np.testing.assert_allclose(params['dense'][k], p[k], rtol=1e-6, err_msg=f'{k} @ {step}')


def test_pretrain_adam_matches_hand_computed_updates():
  config = _optimizer_config(grad_clip_norm=1.0, total_steps=10)
  config.optimizer.update(dict(name='adam', b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.03,
                               decay_pattern='kernel$'))
  config.lr.update(dict(base=1e-3, warmup_steps=1, decay_type='linear', end=1e-5))
  tx, schedule = optim.make_optimizer(config, _quadratic_params())
  params = _quadratic_params()
  state = tx.init(params)
  p = {k: np.asarray(v, np.float64) for k, v in params['dense'].items()}
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v = {k: np.zeros_like(x) for k, x in p.items()}
  for step in (1, 2):
    grads = _grads(params)
    g = {k: np.asarray(x, np.float64) for k, x in grads['dense'].items()}
    norm = np.sqrt(sum((x**2).sum() for x in g.values()))
    g = {k: x * min(1., 1. / norm) for k, x in g.items()}
    progress = np.clip((step - 1) / (10 - 1), 0, 1)
    lr = 1e-5 + (1e-3 - 1e-5) * (1 - progress)
    np.testing.assert_allclose(schedule(step - 1), lr, rtol=1e-6)
    for k in p:
      m[k] = 0.9 * m[k] + 0.1 * g[k]
      v[k] = 0.999 * v[k] + 0.001 * g[k]**2
      update = (m[k] / (1 - 0.9**step)) / (np.sqrt(v[k] / (1 - 0.999**step)) + 1e-8)
      if k == 'kernel':  # Weight decay on kernels only.
        update = update + 0.03 * p[k]
      p[k] = p[k] - lr * update
    updates, state = tx.update(grads, state, params)
    params = jax.tree.map(lambda a, u: a + u, params, updates)
    for k in p:
      np.testing.assert_allclose(params['dense'][k], p[k], rtol=1e-5, err_msg=f'{k} @ {step}')


def _lr(**fields):
  """`config.lr` with `fields` set over base_config's."""
  lr = base_config.get_config().lr
  lr.update(fields)
  return lr


def test_lr_schedule_follows_the_original_formula():
  schedule = optim.lr_schedule(_lr(base=0.03, warmup_steps=500, decay_type='cosine'), 10_000)
  for step in (1, 250, 500, 501, 5000, 10_000):
    progress = np.clip((step - 500) / 9500, 0, 1)
    expected = 0.03 * 0.5 * (1 + np.cos(np.pi * progress)) * min(1, step / 500)
    np.testing.assert_allclose(schedule(step - 1), expected, rtol=1e-5, atol=1e-9)
  piecewise = optim.lr_schedule(_lr(base=0.003, warmup_steps=0, decay_type='piecewise',
                                    boundaries=(3, 6), scales=(0.1, 0.1)), 10)
  np.testing.assert_allclose([piecewise(c) for c in range(8)],
                             [0.003] * 2 + [3e-4] * 3 + [3e-5] * 3, rtol=1e-5)
