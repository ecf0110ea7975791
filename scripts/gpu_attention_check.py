r"""On a real NVIDIA GPU: cuDNN flash attention against XLA's, values, gradients and time.

  python scripts/gpu_attention_check.py            # ViT-B/16 shapes at 224 (197 tokens)
  python scripts/gpu_attention_check.py --batch=64 --tokens=577 --heads=16 --head_dim=64

Checks, in bfloat16, that `vit_jax.models.layers.attention_fn` takes cuDNN (the compiled program holds
`cudnn$fmha` kernels forward and backward) and that its output and the gradients of q, k, v agree
with XLA's attention on the same inputs to bfloat16 accuracy, then times both forward+backward.
Exits 1 when a check fails, 2 when there is no GPU (nothing to check: compile-only targets are
`python -m vit_jax.aot`'s business).
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.models import layers
from vit_jax.aot import hlo


def loss(q, k, v, platform):
  with layers.attention_platform(platform):
    out = layers.attention_fn(q, k, v, deterministic=True)
  return jnp.sum(out.astype(jnp.float32) ** 2)


def timed(fn, args, repeats=20):
  jax.block_until_ready(fn(*args))
  start = time.perf_counter()
  for _ in range(repeats):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / repeats


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--tokens', type=int, default=197)
  parser.add_argument('--heads', type=int, default=12)
  parser.add_argument('--head_dim', type=int, default=64)
  args = parser.parse_args()
  if jax.default_backend() != 'gpu':
    print(f'No GPU (backend {jax.default_backend()}): nothing to check.', file=sys.stderr)
    return 2
  shape = (args.batch, args.tokens, args.heads, args.head_dim)
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  q, k, v = (jax.random.normal(key, shape, jnp.bfloat16) for key in keys)
  results = {}
  for name, platform in (('cudnn', 'gpu'), ('xla', 'xla')):
    fn = jax.jit(jax.value_and_grad(lambda *x, p=platform: loss(*x, p), argnums=(0, 1, 2)))
    found = hlo.analyze(fn.lower(q, k, v).compile().as_text())['fused_attention_kernels']
    kernels = (found['forward'], found['backward'])
    value, grads = fn(q, k, v)
    results[name] = (value, grads, kernels, timed(fn, (q, k, v)))
    print(f'{name}: fused kernels (forward, backward) {kernels}, forward+backward '
          f'{results[name][3] * 1e3:.3f} ms')
  ok = results['cudnn'][2][0] >= 1 and results['cudnn'][2][1] >= 1
  ok &= results['xla'][2] == (0, 0)
  value_error = abs(float(results['cudnn'][0]) - float(results['xla'][0])) / abs(
      float(results['xla'][0]))
  print(f'loss relative difference {value_error:.2e}')
  ok &= value_error < 1e-2
  for name, a, b in zip('qkv', results['cudnn'][1], results['xla'][1]):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    error = np.abs(a - b).max() / max(np.abs(b).max(), 1e-6)
    print(f'd{name}: max difference / max value {error:.2e}')
    ok &= error < 5e-2  # bfloat16 inputs and outputs: 8 bits of mantissa.
  print('OK' if ok else 'FAILED')
  return 0 if ok else 1


if __name__ == '__main__':
  sys.exit(main())
