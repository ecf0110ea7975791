r"""Seconds and bytes of a training checkpoint's save and restore, to any storage path.

  python -m vit_jax.benchmarking.checkpoint_io --directory=/tmp/ckpt \
      --directory=gs://BUCKET/ckpt [--model=ViT-B_16] [--repeats=3]

The state is what the training job checkpoints with AdamW: the model's float32 parameters and
Adam's two moments (for ViT-B/16: 86.6M parameters, 1.04 GB in all), random values, so no
compression flatters the numbers. Each repeat saves it as a new step through Orbax's
`CheckpointManager` (as `training.workdir` does; timed until the save has committed), then
restores it with a new manager, as a restarted job does (timed until the arrays are on the
device), and deletes the step. Bytes are what the step folder holds on the storage.

To measure against the GCS emulator of the tests instead of a real bucket: start
`python tests/storage_servers.py --bucket bench`, export the variables of
`tests/storage_servers.client_env(URL)` and pass `--directory=gs://bench/ckpt`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Sequence

import jax
import numpy as np
import optax

from vit_jax import models
from vit_jax.checkpoint import paths


def train_state(model_name: str = 'ViT-B_16', num_classes: int = 1000,
                image_size: int = 224, seed: int = 0) -> dict[str, Any]:
  """{'step', 'params', 'opt_state'} of `model_name` under AdamW, random float32 values."""
  model = models.get_model(model_name, num_classes=num_classes)
  shapes = models.init_shapes(model, (image_size, image_size))['params']
  rng = np.random.default_rng(seed)

  def fill(x):
    if not np.issubdtype(x.dtype, np.floating):
      return jax.device_put(np.zeros(x.shape, x.dtype))
    return jax.device_put((0.02 * rng.standard_normal(x.shape)).astype(x.dtype))

  params = jax.tree.map(fill, shapes)
  opt_shapes = jax.eval_shape(optax.adamw(1e-3).init, shapes)  # Moments filled like weights.
  return {'step': jax.device_put(np.int32(0)), 'params': params,
          'opt_state': jax.tree.map(fill, opt_shapes)}


def state_bytes(state: Any) -> int:
  return sum(x.nbytes for x in jax.tree.leaves(state))


def measure(directory: str, state: Any, repeats: int) -> list[dict[str, float]]:
  """Per repeat: `save_s`, `restore_s` and `bytes` of a checkpoint of `state` in `directory`."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  paths.probe_writable(directory)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                          state)
  options = ocp.CheckpointManagerOptions(create=True)
  rows = []
  for step in range(1, repeats + 1):
    manager = ocp.CheckpointManager(paths.orbax_path(directory), options=options)
    start = time.perf_counter()
    manager.save(step, args=ocp.args.StandardSave(state))
    manager.wait_until_finished()
    save_s = time.perf_counter() - start
    manager.close()
    written = paths.size(paths.join(directory, str(step)))

    manager = ocp.CheckpointManager(paths.orbax_path(directory), options=options)
    start = time.perf_counter()
    restored = manager.restore(step, args=ocp.args.StandardRestore(abstract))
    jax.block_until_ready(restored)
    restore_s = time.perf_counter() - start
    if not all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in
               zip(jax.tree.leaves(restored), jax.tree.leaves(state))):
      raise AssertionError(f'The checkpoint restored from {directory} differs from the saved one')
    del restored
    manager.delete(step)
    manager.close()
    rows.append({'save_s': save_s, 'restore_s': restore_s, 'bytes': written})
  return rows


def table(results: dict[str, list[dict[str, float]]], state_size: int, model_name: str) -> str:
  """The markdown table of `measure`'s rows, by directory: medians, and every repeat."""
  out = [f'Checkpoint save and restore of {model_name} train state (params + AdamW moments, '
         f'float32, {state_size / 1e9:.2f} GB in memory) with Orbax; median of the repeats, '
         'each repeat in brackets.', '',
         '| storage | save s | restore s | save GB/s | restore GB/s | bytes stored |',
         '|---|---:|---:|---:|---:|---:|']
  for directory, rows in results.items():
    save, restore = ([r[k] for r in rows] for k in ('save_s', 'restore_s'))
    size = statistics.median(r['bytes'] for r in rows)
    def runs(values):
      return ', '.join(f'{v:.1f}' for v in values)
    out.append(f'| `{directory}` | {statistics.median(save):.1f} ({runs(save)}) | '
               f'{statistics.median(restore):.1f} ({runs(restore)}) | '
               f'{size / statistics.median(save) / 1e9:.2f} | '
               f'{size / statistics.median(restore) / 1e9:.2f} | {int(size):,} |')
  return '\n'.join(out)


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--directory', action='append', required=True,
                      help='A folder to checkpoint into (local or gs://...); repeatable.')
  parser.add_argument('--model', default='ViT-B_16')
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args(argv)
  if args.repeats < 1:
    parser.error('--repeats must be positive')
  state = train_state(args.model)
  results = {d: measure(d, state, args.repeats) for d in args.directory}
  print(table(results, state_bytes(state), args.model))


if __name__ == '__main__':
  main()
