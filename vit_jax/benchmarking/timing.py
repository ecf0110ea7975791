"""Throughput of compiled programs: inference, the training loop's step, attention variants."""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vit_jax.benchmarking import flops as flops_lib
from vit_jax.training import base_config
from vit_jax.training import step as step_lib


@dataclasses.dataclass
class Measurement:
  """One compiled program's numbers."""
  compile_s: float
  images_per_s: float
  peak_bytes: int | None
  xla_flops_per_image: float | None


def time_calls(call: Callable[[], Any], iterations: int, warmup: int) -> float:
  """Seconds per call, median over `iterations` timed calls after `warmup` untimed ones."""
  for _ in range(warmup):
    jax.block_until_ready(call())
  times = []
  for _ in range(iterations):
    start = time.perf_counter()
    jax.block_until_ready(call())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _measure(fn: Callable, args: tuple[Any, ...], call: Callable[[Any], Any], batch: int,
             iterations: int, warmup: int) -> Measurement:
  """Compiles `fn` for `args` (timed), then times `call(compiled)` on a batch of `batch`."""
  start = time.perf_counter()
  compiled = fn.lower(*args).compile()
  compile_s = time.perf_counter() - start
  seconds = time_calls(lambda: call(compiled), iterations, warmup)
  flops = flops_lib.xla_flops(compiled)
  return Measurement(compile_s, batch / seconds, flops_lib.peak_bytes(compiled),
                     flops / batch if flops else None)


def measure_inference(model: Any, params: Any, images: jax.Array, iterations: int,
                      warmup: int) -> Measurement:
  """`model.apply` with train=False on `images`, jitted."""
  fn = jax.jit(lambda p, x: model.apply({'params': p}, x, train=False))
  return _measure(fn, (params, images), lambda compiled: compiled(params, images),
                  images.shape[0], iterations, warmup)


def train_step(model: Any, learning_rate: float = 0.01) -> tuple[Callable, Any, str]:
  """(step function, optimizer, description): the training loop's step, SGD momentum 0.9."""
  tx = optax.sgd(learning_rate, momentum=0.9)
  config = base_config.get_config()  # One micro-batch, softmax cross-entropy, no mixup or EMA.
  step = step_lib.make_train_step(model, tx, optax.constant_schedule(learning_rate), config)
  return step, tx, 'vit_jax.training.step.make_train_step with optax SGD, momentum 0.9'


def measure_train(model: Any, params: Any, images: jax.Array, labels: jax.Array,
                  iterations: int, warmup: int) -> tuple[Measurement, str]:
  """The training loop's step (state donated) on (`images`, `labels`); and its description."""
  step, tx, description = train_step(model)
  state = step_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                              opt_state=tx.init(params), model_state={},
                              rng=jax.random.key_data(jax.random.key(0)))
  batch = {'image': images, 'label': labels}
  holder = [state]

  def call(compiled):
    holder[0], metrics = compiled(holder[0], batch)
    return metrics['loss']

  fn = jax.jit(step, donate_argnums=(0,))
  return _measure(fn, (state, batch), call, images.shape[0], iterations, warmup), description


def _attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """Plain softmax attention over (..., tokens, head_dim), the same XLA ops for both cases."""
  logits = jnp.einsum('...qd,...kd->...qk', q, k) / np.sqrt(q.shape[-1]).astype(q.dtype)
  return jnp.einsum('...qk,...kd->...qd', jax.nn.softmax(logits, axis=-1), v)


def attention_cost(batch: int, grid: int = 56, window: int = 7, heads: int = 3,
                   head_dim: int = 32, dtype: Any = jnp.float32, iterations: int = 5,
                   warmup: int = 2) -> list[dict[str, Any]]:
  """Times global and windowed attention over a grid x grid token map (Swin-T's first stage).

  The theoretical ratio counts the two matmuls (logits and weighted sum): global attention
  costs 4 N^2 d per head, windowed 4 N M d with M = window^2 tokens per window, a ratio N / M.
  """
  tokens, per_window = grid * grid, window * window
  keys = jax.random.split(jax.random.key(0), 3)
  shape = (batch, heads, tokens, head_dim)
  q, k, v = (jax.random.normal(key, shape, dtype) for key in keys)

  def windows(x):  # (B, H, N, d) -> (B, H, windows, M, d), grid-aligned windows.
    x = x.reshape(batch, heads, grid // window, window, grid // window, window, head_dim)
    return x.transpose(0, 1, 2, 4, 3, 5, 6).reshape(batch, heads, -1, per_window, head_dim)

  rows = []
  for name, fn in (('global', jax.jit(_attention)),
                   ('windowed', jax.jit(lambda q, k, v: _attention(windows(q), windows(k),
                                                                   windows(v))))):
    compiled = fn.lower(q, k, v).compile()
    seconds = time_calls(lambda c=compiled: c(q, k, v), iterations, warmup)
    rows.append(dict(name=name, seconds=seconds, xla_flops=flops_lib.xla_flops(compiled),
                     matmul_flops=4. * batch * heads * tokens * (
                         tokens if name == 'global' else per_window) * head_dim,
                     peak_bytes=flops_lib.peak_bytes(compiled)))
  return rows
