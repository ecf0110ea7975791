"""Orbax checkpoints on `gs://` (the GCS server on localhost) and on a local folder, through
`paths.orbax_path`: save, list, prune, reopen and restore a tree sharded over 8 devices."""

import json
import os
import subprocess
import sys

import pytest

from helpers import REPO

WORKER = os.path.join(REPO, 'tests', 'orbax_worker.py')


def _run(folder, env, cwd):
  env = dict(env, XLA_FLAGS='--xla_force_host_platform_device_count=8', JAX_PLATFORMS='cpu',
             PYTHONPATH=os.pathsep.join([REPO, os.environ.get('PYTHONPATH', '')]))
  proc = subprocess.run([sys.executable, WORKER, folder], env=env, cwd=cwd, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize('where', ['gs', 'local'])
def test_checkpoint_manager_saves_prunes_and_restores(where, tmp_path, request):
  if where == 'gs':
    server = request.getfixturevalue('gcs_server')
    folder, env = 'gs://test-bucket/run/checkpoints', dict(os.environ, **server.env)
  else:  # A relative path: `orbax_path` makes it absolute, as Orbax requires.
    folder, env = 'run/checkpoints', dict(os.environ)
  seen = _run(folder, env, cwd=tmp_path)
  assert seen['devices'] == 8
  assert seen['steps_after_save'] == [2, 3] and seen['steps_reopened'] == [2, 3]
  assert seen['folders'] == ['2', '3']  # Step 1 pruned from storage, not only from the list.
  assert seen['equal']
  assert seen['kernel_sharding'] == "P('data', 'model')"
  assert seen['kernel_shard_shape'] == [32, 8]  # (64, 32) over the restored (2, 4) mesh.
  assert not (tmp_path / 'gs:').exists()  # os.path.abspath('gs://...') made this folder.
