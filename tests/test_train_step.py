"""The train step's parts, each alone: `step.forward_backward`, `accumulation.accumulate` (and
`split`), `step.ema_update`, `step.step_keys`. The whole step: test_train.py."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.training import accumulation
from vit_jax.training import step as step_lib


class Linear(nn.Module):
  """Logits = flattened image @ W + b: gradients a NumPy reference can write down."""
  num_classes: int = 3

  @nn.compact
  def __call__(self, x, train=False):
    del train
    return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


def _examples(batch=8, classes=3, skipped=(2, 5)):
  rng = np.random.default_rng(0)
  images = rng.standard_normal((batch, 2, 2, 3)).astype(np.float32)
  labels = rng.integers(0, classes, batch).astype(np.int32)
  mask = np.ones(batch, np.float32)
  mask[list(skipped)] = 0
  return {'image': images, 'label': labels, 'targets': np.eye(classes, dtype=np.float32)[labels],
          'mask': mask}


def _cross_entropy(logits, named, targets, teacher_logits):
  del named, teacher_logits
  return step_lib.cross_entropy(logits, targets)


def _forward_backward(model, params, examples, total_weight):
  return step_lib.forward_backward(model, params, {}, examples, jax.random.key(0),
                                   objective=_cross_entropy, total_weight=total_weight)


def test_forward_backward_is_the_weighted_mean_s_gradient_and_micro_batches_add_up():
  model, examples = Linear(), _examples()
  params = model.init(jax.random.key(1), examples['image'])['params']
  total = step_lib.batch_weight(examples['mask'], 8)
  assert float(total) == 6
  grads, new_state, metrics = _forward_backward(model, params, examples, total)
  assert new_state == {}

  # NumPy: mean cross-entropy over the 6 decoded rows, and its gradient.
  x = examples['image'].reshape(8, -1).astype(np.float64)
  w, b = (np.asarray(params['Dense_0'][k], np.float64) for k in ('kernel', 'bias'))
  logits = x @ w + b
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  y, m = examples['targets'], examples['mask']
  loss = -(y * np.log(p)).sum(-1)
  d_logits = m[:, None] * (p - y) / 6
  np.testing.assert_allclose(metrics['loss'], (m * loss).sum() / 6, rtol=1e-6)
  np.testing.assert_allclose(metrics['accuracy'],
                             (m * (logits.argmax(-1) == examples['label'])).sum() / 6)
  np.testing.assert_allclose(grads['Dense_0']['kernel'], x.T @ d_logits, atol=1e-6)
  np.testing.assert_allclose(grads['Dense_0']['bias'], d_logits.sum(0), atol=1e-6)

  # Two halves over the whole batch's weight add up to the whole, skipped rows wherever they are.
  halves = [_forward_backward(model, params, jax.tree.map(lambda v, j=j: v[j::2], examples),
                              total) for j in (0, 1)]
  for whole, first, second in zip(jax.tree.leaves((grads, metrics)),
                                  *(jax.tree.leaves((g, mt)) for g, _, mt in halves)):
    np.testing.assert_allclose(first + second, whole, atol=1e-6)


def test_split_gives_micro_batch_j_the_rows_j_j_plus_k_and_so_on():
  x = np.arange(8 * 2).reshape(8, 2)
  micro = accumulation.split(x, 4)
  assert micro.shape == (4, 2, 2)
  np.testing.assert_array_equal(micro[:, :, 0], [[0, 8], [2, 10], [4, 12], [6, 14]])


def test_accumulate_sums_gradients_and_metrics_and_merges_the_state_once():
  x = np.arange(8, dtype=np.float32) ** 2
  seen = []

  def micro_step(params, model_state, micro, rng):
    seen.append(micro['x'].shape)
    grads = {'w': params['w'] * jnp.sum(micro['x'])}
    new_state = {'avg': model_state['avg'] + jnp.mean(micro['x']),
                 'count': model_state['count'] + 1}
    return grads, new_state, {'n': jnp.float32(micro['x'].shape[0]),
                              'u': jax.random.uniform(rng)}

  rngs = jax.random.split(jax.random.key(0), 4)
  grads, state, metrics = accumulation.accumulate(
      micro_step, {'w': jnp.float32(2.)}, {'avg': jnp.float32(1.), 'count': jnp.int32(5)},
      {'x': x}, rngs)
  assert seen == [(2,)]  # Traced once, in a scan over the 4 micro-batches of 2.
  np.testing.assert_allclose(grads['w'], 2. * x.sum())
  # Every micro-batch starts from the step's state: floats averaged, integers the last one's.
  np.testing.assert_allclose(state['avg'], 1. + x.mean())
  assert int(state['count']) == 6
  assert float(metrics['n']) == 8
  np.testing.assert_allclose(metrics['u'], sum(float(jax.random.uniform(k)) for k in rngs),
                             rtol=1e-6)


def test_ema_update_lerps_floats_and_takes_the_new_counters():
  old = {'w': np.array([1., 2.], np.float32), 'n': np.int32(3)}
  new = {'w': np.array([3., -2.], np.float32), 'n': np.int32(4)}
  got = step_lib.ema_update(new, old, 0.75)
  np.testing.assert_allclose(got['w'], 0.75 * old['w'] + 0.25 * new['w'], rtol=1e-7)
  assert got['n'] == 4 and got['n'].dtype == np.int32


def test_step_keys_give_one_dropout_key_per_micro_batch_and_one_mixup_key():
  key = jax.random.key(3)
  for accum in (1, 4):
    mix, dropout = step_lib.step_keys(key, accum)
    assert dropout.shape == (accum,)
    data = [tuple(np.asarray(jax.random.key_data(k)).ravel()) for k in [mix, *dropout]]
    assert len(set(data)) == accum + 1
  # Without accumulation, the keys the step always drew (a checkpointed run resumes the same).
  mix, dropout = step_lib.step_keys(key, 1)
  expected = jax.random.split(key)
  for got, want in zip([mix, dropout[0]], expected):
    np.testing.assert_array_equal(jax.random.key_data(got), jax.random.key_data(want))
