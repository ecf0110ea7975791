"""Learning-rate schedules and optimizers of the recipes, built from optax pieces.

`config.lr` and `config.optimizer` (see `vit_jax/training/base_config.py`) select them:
  - fine-tuning (ViT paper): SGD momentum 0.9, clip 1, warmup then cosine/linear;
  - pre-training (ViT paper): Adam with weight decay on kernels, warmup then linear decay;
  - AdamW recipes (the CIFAR-10 baseline, DeiT, Swin), with or without decay on biases and norms;
  - BiT-HyperRule: SGD with a piecewise-constant schedule.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax


def lr_schedule(config: Any, total_steps: int) -> optax.Schedule:
  """The original library's schedule of `config` (`config.lr`) as an optax schedule of the
  update count (from 0).

  With step = count + 1: progress = clip((step - warmup) / (total - warmup), 0, 1); 'cosine':
  base * 0.5 * (1 + cos(pi * progress)); 'linear': end + (base - end) * (1 - progress);
  'constant': base; 'piecewise': base * prod(scales[i] for boundaries[i] <= step); the result
  is multiplied by min(1, step / warmup).
  """
  base, warmup = float(config.base), int(config.warmup_steps)
  decay = config.decay_type
  end = float(config.end)
  if decay not in ('cosine', 'linear', 'constant', 'piecewise'):
    raise ValueError(f"Unknown config.lr.decay_type {decay!r}; expected 'cosine', 'linear', "
                     "'constant' or 'piecewise'")
  # numpy, not jnp: building a schedule must allocate nothing (compile-only devices, vit_jax.aot).
  boundaries = np.asarray(config.boundaries or [0], np.float32)
  scales = np.asarray(config.scales or [1.], np.float32)
  if decay == 'piecewise' and len(config.boundaries) != len(config.scales):
    raise ValueError('config.lr.boundaries and config.lr.scales must have the same length')

  def schedule(count):
    step = jnp.asarray(count, jnp.float32) + 1.
    progress = jnp.clip((step - warmup) / max(total_steps - warmup, 1), 0., 1.)
    if decay == 'cosine':
      lr = base * 0.5 * (1. + jnp.cos(jnp.pi * progress))
    elif decay == 'linear':
      lr = end + (base - end) * (1. - progress)
    elif decay == 'piecewise':
      lr = base * jnp.prod(jnp.where(step >= boundaries, scales, 1.))
    else:
      lr = jnp.asarray(base)
    if warmup:
      lr = lr * jnp.minimum(1., step / warmup)
    return lr

  return schedule


def decay_mask(params: Any, pattern: str) -> Any:
  """True for parameters whose '/'-joined path matches `pattern` (re.search)."""
  regex = re.compile(pattern)

  def visit(path, _):
    return bool(regex.search('/'.join(str(getattr(k, 'key', k)) for k in path)))

  return jax.tree_util.tree_map_with_path(visit, params)


def make_optimizer(config: Any, params: Any) -> tuple[optax.GradientTransformation,
                                                       Callable[[Any], Any]]:
  """Builds the optimizer of `config.optimizer` (with clipping) for the job's settings `config`.

  Returns (tx, schedule). Gradient accumulation (`config.accum_steps`) is the train step's: it
  sums the micro-batches' gradients and calls `tx` once on their mean, so the optimizer state is
  the same whatever the accumulation (a run may resume with another `accum_steps`), and holds no
  accumulator (optax.MultiSteps keeps a parameter-sized one: 0.32 GiB per device for ViT-B/16).
  """
  total_steps = int(config.total_steps)
  schedule = lr_schedule(config.lr, total_steps)
  opt = config.optimizer
  name = opt.name
  wd = float(opt.weight_decay)
  parts = []
  if config.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(float(config.grad_clip_norm)))

  dtype = opt.accumulator_dtype  # SGD's momentum, Adam's first moment (big_vision's mu_dtype).
  if name == 'sgd':
    parts.append(optax.trace(decay=float(opt.momentum), nesterov=bool(opt.nesterov),
                             accumulator_dtype=jnp.dtype(dtype) if dtype else None))
  elif name in ('adam', 'adamw'):
    parts.append(optax.scale_by_adam(b1=float(opt.b1), b2=float(opt.b2), eps=float(opt.eps),
                                     mu_dtype=jnp.dtype(dtype) if dtype else None))
  else:
    raise ValueError(f"Unknown config.optimizer.name {name!r}; expected 'sgd', 'adam' or 'adamw'")

  if wd:
    mask = decay_mask(params, opt.decay_pattern)
    if opt.decoupled_weight_decay:
      # big_vision: update = -mult(t) * (lr * adam(g) + wd * p), mult = schedule / base lr.
      base = float(config.lr.base)
      parts.append(optax.scale(base))
      parts.append(optax.add_decayed_weights(wd, mask))
      parts.append(optax.scale_by_schedule(lambda count: -schedule(count) / base))
    else:
      # AdamW (Loshchilov & Hutter, optax.adamw): update = -lr(t) * (adam(g) + wd * p).
      parts.append(optax.add_decayed_weights(wd, mask))
      parts.append(optax.scale_by_learning_rate(schedule))
  else:
    parts.append(optax.scale_by_learning_rate(schedule))

  return optax.chain(*parts), schedule
