r"""Train or fine-tune a model from an experiment config.

  python -m vit_jax.main --config=configs/cifar10_scratch.py:quick --workdir=/tmp/vit
  python -m vit_jax.main --config=configs/finetune.py:ViT-B_16,cifar10 --workdir=/tmp/ft \
      --config.pretrained_path=ViT-B_16.npz

Any config field can be overridden (`--config.total_steps=100`, `--config.evals.test.every=500`),
and `FILE.py:ARGS,evals=NAME` adds an evaluator (`--config.evals.NAME.split=...`); restarting on
the same workdir resumes. Several hosts: start one process per host with --coordinator_address,
--num_processes and --process_id (or the environment jax.distributed reads on clusters); the
workdir is then a bucket every host reaches (`--workdir=gs://BUCKET/run`).

Exit status: 0 when the job ran to its last step; 75 (EX_TEMPFAIL) when a preemption notice
(SIGTERM) stopped it after saving a checkpoint: run the same command again to resume; 1 on an
error.
"""

import os
import shlex
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from vit_jax.training import config_args
from vit_jax.training import preemption
from vit_jax.training import train

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config: configs/FILE.py[:ARGS].', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where checkpoints, logs and metrics go.')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'host:port of process 0, for multi-process training.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Number of processes.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'Index of this process.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if _COORDINATOR.value or _NUM_PROCESSES.value:
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  elif any(v in os.environ for v in ('SLURM_JOB_ID', 'OMPI_COMM_WORLD_SIZE', 'TPU_WORKER_ID')):
    jax.distributed.initialize()  # Cluster environments JAX detects by itself.
  # tf.data only: keep TensorFlow off the accelerators JAX owns.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], 'GPU')
  logging.info('JAX process %d of %d, %d local / %d global devices (%s)', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(),
               jax.devices()[0].platform)
  try:
    metrics = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except preemption.Preempted as e:
    command = shlex.join([sys.executable, '-m', 'vit_jax.main', *sys.argv[1:]])
    logging.warning('Stopped at step %d on a preemption notice. To resume: %s', e.step, command)
    sys.exit(preemption.EXIT_CODE)
  if jax.process_index() == 0:
    summary = ', '.join(f'{k}={v:.4f}' if isinstance(v, float) else f'{k}={v}'
                        for k, v in sorted(metrics.items()))
    print(f'Final: {summary}', flush=True)


def run():
  """Console-script entry point."""
  app.run(main, flags_parser=config_args.flags_parser)


if __name__ == '__main__':
  run()
