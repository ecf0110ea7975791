"""Gradient accumulation: one optimizer step's batch in `accum_steps` micro-batches.

What one big batch computes, and where micro-batches cannot compute it:
  - Gradients, loss and accuracy: exact. Each micro-batch's loss is its weighted sum over the
    whole batch's weight (`step.forward_backward`), so the micro-batches' gradients sum to the
    big batch's gradient, whichever images were skipped.
  - Mixup and cutmix: exact. The whole batch is mixed (pairs, coefficient) before it is split.
  - BatchNorm's running statistics: exact up to rounding where the forward pass agrees. Every
    micro-batch starts from the step's statistics and the updates are merged into one: the mean
    of the micro-batch means, and their variances with the spread of their means (the law of
    total variance), as the whole batch gives them (`merge_model_states`).
  - BatchNorm's forward pass: not exact. In training each micro-batch is normalised with its own
    statistics ("ghost batch norm", Hoffer et al. 2017); the whole batch's are not known before
    every micro-batch has run. `caveats` names it, for `--fit` and the job's log.
  - Dropout, stochastic depth: other masks (each micro-batch draws its own), the same
    distribution.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp

# (params, model_state, examples, rng) -> (grads, new model_state, metrics): one micro-batch.
MicroStep = Callable[[Any, Any, dict[str, jax.Array], jax.Array],
                     tuple[Any, Any, dict[str, jax.Array]]]


def split(x: jax.Array, accum_steps: int) -> jax.Array:
  """(B, ...) -> (accum_steps, B / accum_steps, ...): micro-batch j takes rows j, j + k, ...

  Every device's block of the sharded batch holds rows of every micro-batch, so all devices
  work in every micro-step and no row moves between devices.
  """
  x = x.reshape((x.shape[0] // accum_steps, accum_steps) + x.shape[1:])
  return jnp.swapaxes(x, 0, 1)


def accumulate(micro_step: MicroStep, params: Any, model_state: Any,
               examples: dict[str, jax.Array], rngs: jax.Array,
               bn_momentum: float | None = None) -> tuple[Any, Any, dict[str, jax.Array]]:
  """Runs `micro_step` over the micro-batches of `examples`; sums gradients and metrics.

  Args:
    micro_step: one micro-batch's gradients, new model state and metrics, each already the
      micro-batch's share of the whole batch's (`step.forward_backward`), so sums are exact.
    params: the parameters every micro-batch differentiates.
    model_state: the step's mutable collections; every micro-batch starts from them.
    examples: the whole batch (leading dimension B), split by `split`.
    rngs: one key per micro-batch (leading dimension accum_steps).
    bn_momentum: BatchNorm's momentum, needed where `model_state` holds `batch_stats`.

  Returns:
    (summed gradients, the merged model state, summed metrics).

  The loop only sums gradients, so XLA can reduce them across devices once, after it; TPU and
  GPU compilers do, the CPU backend reduces every micro-batch's (README, Training).
  """
  accum_steps = rngs.shape[0]

  def body(grad_sum, xs):
    micro, rng = xs
    grads, new_state, metrics = micro_step(params, model_state, micro, rng)
    return jax.tree.map(jnp.add, grad_sum, grads), (new_state, metrics)

  zeros = jax.tree.map(jnp.zeros_like, params)
  micro_batches = jax.tree.map(lambda x: split(x, accum_steps), examples)
  grads, (states, metrics) = jax.lax.scan(body, zeros, (micro_batches, rngs))
  merged = merge_model_states(model_state, states, bn_momentum)
  return grads, merged, jax.tree.map(lambda m: jnp.sum(m, 0), metrics)


def merge_model_states(old: Any, stacked: Any, bn_momentum: float | None) -> Any:
  """One update of the mutable collections from the micro-batches' updates of `old`.

  `stacked` holds each micro-batch's new state (leading dimension accum_steps), each computed
  from `old`. Floating-point leaves are averaged: an exponential average of a batch mean
  updated from the same `old` by each equal micro-batch averages to the whole batch's update.
  BatchNorm's `var` (flax's biased batch variance) adds the spread of the micro-batch means
  (law of total variance): with momentum m, micro-batch j's update of the running mean is
  m * old + (1 - m) * mean_j, so mean_j - mean = (update_j - update) / (1 - m). Other leaves
  (integers) take the last micro-batch's value.

  Raises:
    ValueError: `old` holds `batch_stats` but `bn_momentum` is None.
  """
  if 'batch_stats' in old and jax.tree.leaves(old['batch_stats']) and bn_momentum is None:
    raise ValueError('Gradient accumulation with BatchNorm needs the model\'s BatchNorm '
                     'momentum (a `bn_momentum` attribute) to merge the running statistics')

  def average(x):
    return jnp.mean(x, 0) if jnp.issubdtype(x.dtype, jnp.floating) else x[-1]

  merged = jax.tree.map(average, stacked)
  if 'batch_stats' not in merged or bn_momentum is None or bn_momentum >= 1:
    return merged
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(merged['batch_stats']))
  flat_stacked = flax.traverse_util.flatten_dict(flax.core.unfreeze(stacked['batch_stats']))
  for path in [p for p in flat if p[-1] == 'var' and p[:-1] + ('mean',) in flat]:
    means = flat_stacked[path[:-1] + ('mean',)]
    spread = jnp.mean(jnp.square(means - flat[path[:-1] + ('mean',)]), 0)
    flat[path] = flat[path] + spread / (1. - bn_momentum)
  return {**merged, 'batch_stats': flax.traverse_util.unflatten_dict(flat)}


def caveats(model_name: str, model_state: Any, accum_steps: int) -> list[str]:
  """What `accum_steps` micro-batches compute differently from one batch, in words (for
  `--fit` and the job's log); empty where they compute the same step."""
  if accum_steps <= 1 or not jax.tree.leaves(dict(model_state).get('batch_stats', {})):
    return []
  return [f'{model_name} has BatchNorm: with accum_steps={accum_steps} each micro-batch is '
          'normalised with its own statistics in training (ghost batch norm), not the whole '
          "batch's, so the step differs from one big batch's; the running statistics are "
          'updated once per step, as the whole batch gives them']
