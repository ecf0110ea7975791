"""A few train steps of the tiny test ViT on fixed synthetic global batches, in one process of a
(possibly multi-process) run. Writes the losses, the final parameters and the per-device shard
shapes to --out. Used by tests/test_distributed.py in subprocesses, since the device count of a
process is fixed when JAX starts."""

import argparse
import json
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import helpers  # pylint: disable=g-import-not-at-top,wrong-import-position
import tiny_config  # pylint: disable=g-import-not-at-top,wrong-import-position
from vit_jax import checkpoint  # pylint: disable=g-import-not-at-top,wrong-import-position
from vit_jax.training import sharding  # pylint: disable=g-import-not-at-top,wrong-import-position

GLOBAL_BATCH = 16


def global_batch(step: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(step)
  return {'image': rng.standard_normal((GLOBAL_BATCH, 32, 32, 3)).astype(np.float32),
          'label': rng.integers(0, 10, GLOBAL_BATCH).astype(np.int32)}


def run(mesh_axes, rules, num_devices, steps, out, fsdp_report):
  config = tiny_config.get_config()
  config.batch_size = GLOBAL_BATCH
  config.total_steps = steps
  config.mesh = mesh_axes
  config.sharding_rules = rules
  devices = jax.devices()[:num_devices] if num_devices else None
  mesh = sharding.make_mesh(mesh_axes, devices)
  job = helpers.job_for(config, 10, mesh)
  batch_sharding = job.batch_sharding
  with jax.set_mesh(mesh):
    state = job.init_state()
    losses = []
    for step in range(steps):
      batch = global_batch(step % 2)  # Two batches, revisited: the loss must fall.
      rows = np.array_split(np.arange(GLOBAL_BATCH), jax.process_count())[jax.process_index()]
      local = {k: v[rows] for k, v in batch.items()}
      batch = jax.tree.map(lambda x: jax.make_array_from_process_local_data(batch_sharding, x),
                           local)
      state, metrics = job.train_step(state, batch, None)
      losses.append(float(metrics['loss']))
    shard_shapes = {sharding.path_str(path): list(x.addressable_shards[0].data.shape)
                    for path, x in jax.tree_util.tree_flatten_with_path(state.params)[0]}
    params = sharding.gather(state.params)
  if jax.process_index() == 0:
    flat = {k: np.asarray(v) for k, v in checkpoint.flatten(jax.device_get(params)).items()}
    np.savez(out, losses=np.array(losses), **{f'params/{k}': v for k, v in flat.items()})
    if fsdp_report:
      with open(fsdp_report, 'w') as f:
        json.dump(shard_shapes, f)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--runs', required=True,
                      help='JSON list of [mesh axes, rules, num_devices, out, shard report]')
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--coordinator', default=None)
  parser.add_argument('--num_processes', type=int, default=1)
  parser.add_argument('--process_id', type=int, default=0)
  args = parser.parse_args()
  if args.coordinator:
    jax.distributed.initialize(coordinator_address=args.coordinator,
                               num_processes=args.num_processes, process_id=args.process_id)
  for mesh_axes, rules, num_devices, out, report in json.loads(args.runs):
    run([tuple(a) for a in mesh_axes], [tuple(r) for r in rules], num_devices, args.steps, out,
        report)


if __name__ == '__main__':
  main()
