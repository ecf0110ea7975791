r"""Our ViT against big_vision's, compiled in the same plain train step for the same target.

A measurement, not a dependency: big_vision's `models/vit.py` is read from a checkout you give
(its two imports that only its checkpoint loader uses are stubbed). Both models are the ViT
paper's pre-training variant (token pooling, a tanh representation layer, dropout 0.1, 1000
classes, learned position embeddings), computed in `--dtype` with float32 parameters, and go
through one step: softmax cross-entropy, gradient clipping at norm 1, Adam; parameters and
optimizer state replicated, the batch split over the devices. Nothing is run or allocated:

  git clone https://github.com/google-research/big_vision /tmp/big_vision
  python scripts/compare_big_vision.py --big_vision_vit=/tmp/big_vision/big_vision/models/vit.py \
      --target=v5e-8 --batch=1024

prints, per model and per device, XLA's temporaries, bytes accessed and FLOPs, and how many
dot/convolution ops of the compiled program produce float32.
"""

import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

# pylint: disable=g-import-not-at-top,wrong-import-position
import importlib.util
import json
import re
import sys
import time
import types
from typing import Any, Callable

from absl import app
from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vit_jax import models
from vit_jax.aot import targets
from vit_jax.models import layers

_BV_VIT = flags.DEFINE_string('big_vision_vit', None, "Path to big_vision's models/vit.py.")
_TARGET = flags.DEFINE_string('target', 'v5e-8', 'A vit_jax.aot target, e.g. v5e-8, h100-8.')
_BATCH = flags.DEFINE_integer('batch', 1024, 'Global batch.')
_VARIANT = flags.DEFINE_string('variant', 'B/16', 'big_vision variant; ours is ViT-{B}_{16}.')
_DEPTH = flags.DEFINE_integer('depth', None, 'Fewer layers than the variant (quick looks).')
_DTYPE = flags.DEFINE_string('dtype', 'bfloat16', 'Compute dtype of both models.')
_SIZE = flags.DEFINE_integer('image_size', 224, 'Image side.')
_JSON = flags.DEFINE_string('json', None, 'Also write the numbers here.')
_HLO_DIR = flags.DEFINE_string('hlo_dir', None, "Write each side's optimized HLO here.")
_ONLY = flags.DEFINE_enum('only', None, ['vit_jax', 'big_vision'], 'Compile one side only.')
flags.mark_flag_as_required('big_vision_vit')

NUM_CLASSES = 1000
_F32_DOT = re.compile(r'= f32\[[\d,]*\]\{?[^=]*? (dot|convolution)\(')


def load_big_vision_vit(path: str) -> types.ModuleType:
  """big_vision's vit.py as a module; `big_vision.utils`/`common` serve only its loaders."""
  for name in ('big_vision', 'big_vision.models', 'big_vision.utils', 'big_vision.models.common'):
    sys.modules.setdefault(name, types.ModuleType(name))
  sys.modules['big_vision'].utils = sys.modules['big_vision.utils']
  sys.modules['big_vision.models'].common = sys.modules['big_vision.models.common']
  spec = importlib.util.spec_from_file_location('big_vision_vit', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def our_model(variant: str, depth: int | None, dtype: str) -> nn.Module:
  """Our zoo's ViT of big_vision's `variant` ('B/16' is ViT-B_16), as big_vision's below."""
  size, patch = variant.split('/')
  name = f'ViT-{size}_{patch}'
  transformer = {'dropout_rate': 0.1}
  if depth:
    transformer['num_layers'] = depth
  return models.get_model(name, num_classes=NUM_CLASSES, dtype=dtype, transformer=transformer,
                          representation_size=models.MODEL_CONFIGS[name].hidden_size)


def big_vision_model(module: types.ModuleType, variant: str, depth: int | None,
                     dtype: str) -> nn.Module:
  """big_vision's ViT as the paper pre-trains it: [CLS] pooling, a representation layer."""
  extra = {'depth': depth} if depth else {}
  return module.Model(NUM_CLASSES, variant=variant, pool_type='tok', rep_size=True,
                      dropout=0.1, posemb='learn', dtype_mm=dtype, **extra)


def plain_step(apply: Callable[..., jax.Array], tx: optax.GradientTransformation):
  """One optimizer step: cross-entropy, gradients, the optimizer; no metrics but the loss."""

  def step(params, opt_state, images, labels, key):
    def loss_fn(p):
      logits = apply(p, images, key)
      return optax.softmax_cross_entropy_with_integer_labels(
          logits.astype(jnp.float32), labels).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss
  return step


def compile_model(name: str, model: nn.Module, unwrap: Callable[[Any], jax.Array],
                  mesh: jax.sharding.Mesh, platform: str) -> dict[str, Any]:
  """Compiles `model`'s plain step on `mesh`; XLA's per-device figures."""
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  size = _SIZE.value
  images = jax.ShapeDtypeStruct((_BATCH.value, size, size, 3), jnp.float32, sharding=split)
  labels = jax.ShapeDtypeStruct((_BATCH.value,), jnp.int32, sharding=split)
  key = jax.eval_shape(lambda: jax.random.key(0))
  key = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=replicated)
  tx = optax.chain(optax.clip_by_global_norm(1.), optax.adam(1e-3))
  with layers.attention_platform(platform), jax.set_mesh(mesh):
    params = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)))['params'])
    opt_state = jax.eval_shape(tx.init, params)
    params, opt_state = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
        (params, opt_state))

    def apply(p, x, k):
      return unwrap(model.apply({'params': p}, x, train=True, rngs={'dropout': k}))
    step = jax.jit(plain_step(apply, tx), donate_argnums=(0, 1))
    start = time.time()
    compiled = step.lower(params, opt_state, images, labels, key).compile()
    seconds = time.time() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  memory = compiled.memory_analysis()
  text = compiled.as_text()
  if _HLO_DIR.value:
    os.makedirs(_HLO_DIR.value, exist_ok=True)
    with open(os.path.join(_HLO_DIR.value, f'{name}.hlo.txt'), 'w') as f:
      f.write(text)
  return {'model': name, 'params': sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params)),
          'temporaries_bytes': int(memory.temp_size_in_bytes),
          'arguments_bytes': int(memory.argument_size_in_bytes),
          'bytes_accessed': float(cost.get('bytes accessed', -1)),
          'flops': float(cost.get('flops', -1)),
          'float32_dot_or_conv_ops': len(_F32_DOT.findall(text)),
          'compile_seconds': round(seconds, 1)}


def main(argv):
  del argv
  target = targets.parse(_TARGET.value)
  devices = targets.devices(target)
  mesh = jax.sharding.Mesh(np.array(devices), ('data',))
  bv = load_big_vision_vit(_BV_VIT.value)
  sides = {
      'vit_jax': lambda: compile_model(
          'vit_jax', our_model(_VARIANT.value, _DEPTH.value, _DTYPE.value), lambda out: out,
          mesh, target.platform),
      'big_vision': lambda: compile_model(
          'big_vision', big_vision_model(bv, _VARIANT.value, _DEPTH.value, _DTYPE.value),
          lambda out: out[0], mesh, target.platform),
  }
  rows = [compile_side() for name, compile_side in sides.items()
          if _ONLY.value in (None, name)]
  print(f'{_VARIANT.value} depth {_DEPTH.value or "full"}, {_DTYPE.value}, batch '
        f'{_BATCH.value} on {target.name} ({len(devices)} x {devices[0].device_kind}); '
        'per device, compiler figures:')
  print('| model | params | temporaries GiB | bytes accessed GB | TFLOP | f32 dot/conv ops | '
        'compile s |')
  print('|---|---:|---:|---:|---:|---:|---:|')
  for r in rows:
    print(f'| {r["model"]} | {r["params"] / 1e6:.1f} M | {r["temporaries_bytes"] / 2**30:.2f} | '
          f'{r["bytes_accessed"] / 1e9:.1f} | {r["flops"] / 1e12:.2f} | '
          f'{r["float32_dot_or_conv_ops"]} | {r["compile_seconds"]} |')
  if len(rows) == 2:
    ours, theirs = rows
    print('ours / big_vision: temporaries '
          f'{ours["temporaries_bytes"] / theirs["temporaries_bytes"]:.3f}, '
          f'bytes accessed {ours["bytes_accessed"] / theirs["bytes_accessed"]:.3f}')
  if _JSON.value:
    with open(_JSON.value, 'w') as f:
      json.dump({'target': target.name, 'batch': _BATCH.value, 'dtype': _DTYPE.value,
                 'variant': _VARIANT.value, 'depth': _DEPTH.value, 'rows': rows}, f, indent=2)


if __name__ == '__main__':
  app.run(main)
