"""Scale-out: the same training on meshes (8,), (4, 2) FSDP and (1,), on two processes through
jax.distributed, and a checkpoint written on 8 devices resumed on 1 — all on simulated CPU
devices, in subprocesses (a process's device count is fixed when JAX starts)."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from helpers import REPO, run_main
from vit_jax import checkpoint

WORKER = os.path.join(REPO, 'tests', 'distributed_worker.py')


def _env(num_devices):
  env = dict(os.environ)
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={num_devices}'
  env['PYTHONPATH'] = os.pathsep.join([REPO, os.environ.get('PYTHONPATH', '')])
  return env


def _worker(runs, num_devices, steps, extra=()):
  cmd = [sys.executable, WORKER, '--runs', json.dumps(runs), '--steps', str(steps), *extra]
  return subprocess.Popen(cmd, env=_env(num_devices), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _finish(proc):
  out, _ = proc.communicate(timeout=600)
  assert proc.returncode == 0, out[-4000:]


def _params(path):
  with np.load(path) as data:
    return data['losses'], {k: data[k] for k in data.files if k.startswith('params/')}


@pytest.mark.slow
def test_dp_fsdp_and_single_device_train_identically(tmp_path):
  runs = [
      [[['data', 8]], [], 8, str(tmp_path / 'dp8.npz'), None],
      [[['data', 4], ['fsdp', 2]], [['.*', 'fsdp:fsdp:256']], 8, str(tmp_path / 'fsdp.npz'),
       str(tmp_path / 'fsdp_shards.json')],
      [[['data', 1]], [], 1, str(tmp_path / 'one.npz'), None],
  ]
  _finish(_worker(runs, 8, steps=5))
  losses_one, params_one = _params(tmp_path / 'one.npz')
  assert losses_one[-1] < losses_one[0]
  for name in ('dp8', 'fsdp'):
    losses, params = _params(tmp_path / f'{name}.npz')
    np.testing.assert_allclose(losses, losses_one, atol=1e-5, err_msg=name)
    for key in params_one:
      np.testing.assert_allclose(params[key], params_one[key], atol=1e-5, err_msg=f'{name} {key}')
  # FSDP really splits: each device holds half of every large tensor (2-way 'fsdp' axis).
  shards = json.loads((tmp_path / 'fsdp_shards.json').read_text())
  assert shards['Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel'] == [32, 32]  # (32, 64)
  assert shards['Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel'] == [
      16, 2, 16]  # (32, 2, 16)
  assert shards['head/bias'] == [10]  # Below the size threshold: replicated.


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
  coordinator = f'127.0.0.1:{_free_port()}'
  two = [[[['data', 2]], [['.*', 'fsdp:data:256']], 0, str(tmp_path / 'two.npz'), None]]
  procs = [_worker(two, 1, steps=3, extra=('--coordinator', coordinator, '--num_processes', '2',
                                           '--process_id', str(i))) for i in range(2)]
  one = _worker([[[['data', 1]], [], 1, str(tmp_path / 'one.npz'), None]], 1, steps=3)
  for proc in procs + [one]:
    _finish(proc)
  losses_two, params_two = _params(tmp_path / 'two.npz')
  losses_one, params_one = _params(tmp_path / 'one.npz')
  np.testing.assert_allclose(losses_two, losses_one, atol=1e-5)
  for key in params_one:
    np.testing.assert_allclose(params_two[key], params_one[key], atol=1e-5, err_msg=key)


def test_checkpoint_from_8_devices_resumes_on_1(tmp_path, data_overrides, monkeypatch):
  fsdp = ('--config.mesh=(("data", 8),)',
          '--config.sharding_rules=((".*", "fsdp:data:256"),)')
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
  run_main(tmp_path / 'straight', data_overrides, extra=fsdp)
  run_main(tmp_path / 'moved', data_overrides, extra=fsdp, kill_after_checkpoint=4)
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=1')
  out = run_main(tmp_path / 'moved', data_overrides)
  assert 'Final:' in out
  log = (tmp_path / 'moved' / 'train.0.log').read_text()
  assert 'Resumed from the checkpoint of step' in log
  a = checkpoint.flatten(checkpoint.load(tmp_path / 'straight' / 'model.npz'))
  b = checkpoint.flatten(checkpoint.load(tmp_path / 'moved' / 'model.npz'))
  for key in a:
    np.testing.assert_allclose(a[key], b[key], atol=1e-5, err_msg=key)


@pytest.mark.slow
def test_main_on_two_processes_then_resumed_on_one(tmp_path, data_overrides, monkeypatch):
  """The whole job on 2 processes x 2 devices: each host reads its slice, evaluation still counts
  every example once, process 0 alone writes metrics and the .npz; one process resumes it."""
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=2')
  coordinator = f'127.0.0.1:{_free_port()}'
  args = [sys.executable, '-m', 'vit_jax.main',
          f'--config={os.path.join(REPO, "tests", "tiny_config.py")}:{data_overrides["dataset"]}',
          f'--workdir={tmp_path}', f'--config.data_dir={data_overrides["data_dir"]}',
          f'--coordinator_address={coordinator}', '--num_processes=2']
  env = {**os.environ, 'PYTHONPATH': os.pathsep.join([REPO, os.environ.get('PYTHONPATH', '')])}
  procs = [subprocess.Popen(args + [f'--process_id={i}'], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outputs = []
  for proc in procs:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    outputs.append(out)
  assert 'test/examples=300,' in outputs[0]  # 300 test images split over two hosts.
  assert 'Final:' not in outputs[1]  # Only process 0 reports...
  assert len(list(tmp_path.glob('events.out.tfevents.*'))) == 1  # ...and writes metrics.
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['12', '8']
  classes = 10 if data_overrides['dataset'] == 'cifar10' else 3  # the generated folder has 3
  assert checkpoint.load(tmp_path / 'model.npz')['head']['kernel'].shape == (32, classes)

  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=1')
  out = run_main(tmp_path, data_overrides, extra=('--config.total_steps=16',))
  assert 'step=16' in out
  assert 'Resumed from the checkpoint of step 12' in (tmp_path / 'train.0.log').read_text()
