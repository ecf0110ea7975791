"""Orbax's CheckpointManager on a folder given as a path string (`gs://...` or local), in a
process of its own (8 host CPU devices: XLA_FLAGS is read when JAX starts).

Saves a sharded tree at steps 1-3 keeping 2, reopens the folder with a new manager, restores
step 3 onto a different layout, and prints what it saw as JSON for `tests/test_orbax_storage.py`.
"""

import json
import sys

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import orbax.checkpoint as ocp

from vit_jax.checkpoint import paths


def _tree(step, mesh):
  kernel = np.arange(64 * 32, dtype=np.float32).reshape(64, 32) + step
  return {'kernel': jax.device_put(kernel, NamedSharding(mesh, P('data', 'model'))),
          'bias': jax.device_put(np.full((32,), step, np.float32), NamedSharding(mesh, P())),
          'step': jax.device_put(np.int32(step), NamedSharding(mesh, P()))}


def main(folder):
  mesh = jax.make_mesh((4, 2), ('data', 'model'))
  options = ocp.CheckpointManagerOptions(max_to_keep=2, create=True)
  manager = ocp.CheckpointManager(paths.orbax_path(folder), options=options)
  for step in (1, 2, 3):
    manager.save(step, args=ocp.args.StandardSave(_tree(step, mesh)))
  manager.wait_until_finished()
  steps_after_save = manager.all_steps()
  manager.close()

  reopened = ocp.CheckpointManager(paths.orbax_path(folder), options=options)
  other = jax.make_mesh((2, 4), ('data', 'model'))
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                          _tree(0, other))
  restored = reopened.restore(reopened.latest_step(), args=ocp.args.StandardRestore(abstract))
  expected = _tree(3, other)
  print(json.dumps({
      'devices': jax.device_count(),
      'steps_after_save': steps_after_save,
      'steps_reopened': reopened.all_steps(),
      'folders': paths.listdir(folder),
      'equal': all(np.array_equal(np.asarray(restored[k]), np.asarray(expected[k]))
                   for k in expected),
      'kernel_sharding': str(restored['kernel'].sharding.spec),
      'kernel_shard_shape': list(restored['kernel'].addressable_shards[0].data.shape),
  }))


if __name__ == '__main__':
  main(sys.argv[1])
