"""Pods share no disk: the training job on a `gs://` workdir (the GCS server on localhost), run as
a user runs it (`python -m vit_jax.main` in subprocesses, each in a folder of its own).

- killed with SIGKILL and restarted, it ends bit-identical to an uninterrupted local run; its
  export is read back from the bucket by `classify` and `fewshot`;
- it fine-tunes from a pre-trained file on the bucket, and fails before its first step on a
  bucket that does not exist;
- SIGTERM (with periodic checkpoints off) saves the step reached and exits with status 75; the
  restart resumes exactly; a second SIGTERM during the save leaves the earlier checkpoint;
- two processes (jax.distributed) with no shared local folder agree on the step a SIGTERM to one
  of them saves, and resume it exactly.
"""

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
from PIL import Image
import pytest

from helpers import REPO, write_eval_pngs
import tiny_config
from vit_jax import checkpoint
from vit_jax.checkpoint import paths
from vit_jax.models import loader
from vit_jax.training import preemption
from vit_jax.training import step as step_lib

pytestmark = pytest.mark.slow

STEPS = 64


def main_args(workdir, data, *extra, steps=STEPS):
  """`python -m vit_jax.main` on the tiny config: `steps` steps, evaluation at the end only."""
  return [sys.executable, '-m', 'vit_jax.main',
          f'--config={os.path.join(REPO, "tests", "tiny_config.py")}:{data["dataset"]}',
          f'--workdir={workdir}', f'--config.data_dir={data["data_dir"]}',
          f'--config.total_steps={steps}', '--config.log_every=4',
          f'--config.evals.test.every={steps}', *extra]


class Process:
  """A command in a subprocess, in `folder` (its working and temporary folder), its output in a
  file that the test watches."""

  def __init__(self, args, folder, **env):
    folder.mkdir(parents=True, exist_ok=True)
    self.folder, self.log = folder, folder / 'output.txt'
    self._out = open(self.log, 'w')  # pylint: disable=consider-using-with
    pythonpath = os.pathsep.join([REPO, os.environ.get('PYTHONPATH', '')])
    self.proc = subprocess.Popen(
        args, cwd=folder, stdout=self._out, stderr=subprocess.STDOUT,
        env={**os.environ, 'PYTHONPATH': pythonpath, 'TMPDIR': str(folder), **env})

  def output(self):
    return self.log.read_text()

  def wait_for(self, pattern, timeout=600):
    """The first match of regex `pattern` in the output, waiting for it."""
    deadline = time.time() + timeout
    while time.time() < deadline:
      running = self.proc.poll() is None
      match = re.search(pattern, self.output())
      if match:
        return match
      assert running, f'exited ({self.proc.returncode}) before {pattern!r}:\n{self.tail()}'
      time.sleep(0.02)
    raise AssertionError(f'no {pattern!r} after {timeout} s:\n{self.tail()}')

  def finish(self, timeout=600):
    """The exit status."""
    try:
      return self.proc.wait(timeout=timeout)
    finally:
      self._out.close()

  def tail(self):
    return self.output()[-4000:]


def run(args, folder, **env):
  process = Process(args, folder, **env)
  assert process.finish() == 0, process.tail()
  return process.output()


def tool(args, folder):
  """A command-line tool in a subprocess in `folder`: its standard output (its logs, on standard
  error, are left out)."""
  folder.mkdir(parents=True, exist_ok=True)
  pythonpath = os.pathsep.join([REPO, os.environ.get('PYTHONPATH', '')])
  result = subprocess.run(args, cwd=folder, capture_output=True, text=True, check=False,
                          env={**os.environ, 'PYTHONPATH': pythonpath, 'TMPDIR': str(folder)})
  assert result.returncode == 0, result.stdout + result.stderr[-4000:]
  return result.stdout


def flat_export(workdir, name='model.npz'):
  return checkpoint.flatten(checkpoint.load(paths.join(str(workdir), name)))


def local_leftovers(folder):
  """What a job left in its working and temporary folder: a folder named `gs:` (what
  os.path.abspath makes of a URL) or a staging folder not cleaned up."""
  return [name for name in os.listdir(folder)
          if name == 'gs:' or name.startswith('vit_jax-')]


def assert_bit_identical(a, b):
  assert sorted(a) == sorted(b)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.fixture(scope='module')
def reference(tmp_path_factory, data_overrides):
  """An uninterrupted local run (periodic checkpoints off): its workdir."""
  root = tmp_path_factory.mktemp('reference')
  run(main_args(root / 'workdir', data_overrides, '--config.checkpoint_every=1000'), root)
  return root / 'workdir'


@pytest.fixture(scope='module')
def killed_run(gcs_server, tmp_path_factory, data_overrides):
  """The same run on gs://, SIGKILLed once its checkpoint of step 16 committed, restarted:
  (workdir, the local folders of the two processes, the restart's output)."""
  workdir, root = 'gs://test-bucket/killed', tmp_path_factory.mktemp('killed')
  args = main_args(workdir, data_overrides, '--config.checkpoint_every=8')
  first = Process(args, root / 'first')
  deadline = time.time() + 600
  while not paths.exists(f'{workdir}/checkpoints/16/commit_success.txt'):  # Orbax's mark.
    assert first.proc.poll() is None and time.time() < deadline, first.tail()
    time.sleep(0.05)
  first.proc.send_signal(signal.SIGKILL)
  assert first.finish() == -signal.SIGKILL, 'the run ended before it was killed'
  out = run(args, root / 'second')
  return workdir, root, out


def test_killed_on_gs_and_restarted_ends_as_an_uninterrupted_local_run(killed_run, reference):
  workdir, root, out = killed_run
  assert re.search(r'Resumed from the checkpoint of step (16|24|32) in gs://test-bucket/killed/'
                   'checkpoints', out)
  assert_bit_identical(flat_export(workdir), flat_export(reference))
  held = paths.listdir(workdir)
  for name in ('checkpoints', 'config.json', 'model.json', 'model.npz', 'train.0.log'):
    assert name in held
  # TensorBoard's events on the bucket, read back as `visualize curves` reads them: the
  # restarted run's at least (the killed run's as of its last copy).
  from vit_jax.tools import visualize  # pylint: disable=g-import-not-at-top
  scalars = visualize.read_scalars(workdir)
  assert set(range(36, STEPS + 1, 4)) <= set(scalars['train_loss'][0].tolist())
  assert scalars['test/accuracy'][0].tolist() == [STEPS]
  assert 'Exported gs://test-bucket/killed/model.npz' in paths.read_text(workdir + '/train.0.log')
  # Nothing written to a local `gs:` folder; the restart cleaned up its staging folder (the
  # killed run could not: SIGKILL leaves its staging folder in its temporary folder).
  assert 'gs:' not in os.listdir(root / 'first')
  assert not local_leftovers(root / 'second')


def test_the_export_on_gs_is_read_by_classify_and_fewshot(killed_run, reference, tmp_path,
                                                          data_overrides):
  workdir, _, _ = killed_run
  images, _ = write_eval_pngs(tiny_config.for_data(data_overrides), str(tmp_path), 3)
  remote_image = 'gs://test-bucket/images/0.png'
  paths.write_bytes(remote_image, open(images[0], 'rb').read())
  outputs = {}
  for where, model in (('gs', f'{workdir}/model.npz'), ('local', reference / 'model.npz')):
    classified = tool([sys.executable, '-m', 'vit_jax.tools.classify', f'--checkpoint={model}',
                      '--top_k=3', *images, remote_image], tmp_path / f'classify_{where}')
    probed = tool([sys.executable, '-m', 'vit_jax.tools.fewshot', f'--checkpoint={model}',
                  f'--dataset={data_overrides["dataset"]}',
                  f'--data_dir={data_overrides["data_dir"]}', '--train_split=train[:100]',
                  '--test_split=test[:30]', '--shots=1,2', '--num_seeds=1', '--batch_size=50'],
                 tmp_path / f'fewshot_{where}')
    outputs[where] = (classified, [line for line in probed.splitlines()
                                   if line.startswith('fewshot_')])
  classified, probed = outputs['gs']
  assert classified.startswith(f'{10 if data_overrides["dataset"] == "cifar10" else 3} classes '
                               '(labels from the model card)')
  assert remote_image in classified.splitlines()
  # The gs:// image is the first local one, so it gets the same classes and scores.
  lines = classified.splitlines()
  first = lines.index(images[0])
  assert lines[first + 1:first + 4] == lines[lines.index(remote_image) + 1:][:3]
  assert [line.split(':')[0] for line in probed] == ['fewshot_1shot', 'fewshot_2shot']
  assert outputs['gs'] == outputs['local']


def test_convert_and_visualize_read_and_write_gs(killed_run, reference, tmp_path, timm):
  """`convert` (with `--check`, parity against timm) and `visualize` with every path on gs://."""
  del timm  # --check needs it.
  workdir, _, _ = killed_run
  tools = 'gs://test-bucket/tools'
  out = tool([sys.executable, '-m', 'vit_jax.tools.convert', f'--from={workdir}/model.npz',
             f'--to={tools}/model.safetensors', '--check'], tmp_path / 'to_timm')
  delta = float(re.search(r'--check: max \|outputs\(ours\) - outputs\(timm\)\| = (\S+)',
                          out).group(1))
  assert delta < 1e-4, out
  tool([sys.executable, '-m', 'vit_jax.tools.convert', f'--from={tools}/model.safetensors',
       f'--to={tools}/back.npz'], tmp_path / 'back')
  assert_bit_identical(flat_export(tools, 'back.npz'), flat_export(reference))  # Round trip.

  figures = {}
  for where, model, output in (('gs', f'{workdir}/model.npz', f'{tools}/posemb.png'),
                               ('local', reference / 'model.npz', tmp_path / 'posemb.png')):
    tool([sys.executable, '-m', 'vit_jax.tools.visualize', 'posemb', f'--checkpoint={model}',
         f'--output={output}'], tmp_path / f'posemb_{where}')
    with paths.open_read(str(output)) as f:
      figures[where] = np.asarray(Image.open(f))
  np.testing.assert_array_equal(figures['gs'], figures['local'])
  out = tool([sys.executable, '-m', 'vit_jax.tools.visualize', 'curves', f'--workdir={workdir}',
             f'--output={tools}/curves.png'], tmp_path / 'curves')
  assert f'Wrote {tools}/curves.png' in out
  with paths.open_read(f'{tools}/curves.png') as f:
    assert Image.open(f).format == 'PNG'


def test_finetuning_from_a_pretrained_file_on_gs(gcs_server, reference, tmp_path,
                                                 data_overrides):
  pretrained = 'gs://test-bucket/pretrained/model.npz'
  paths.write_bytes(pretrained, (reference / 'model.npz').read_bytes())
  # Learning rate 0: the parameters stay as loaded, so the export is what the job loaded.
  run(main_args(tmp_path / 'workdir', data_overrides, f'--config.pretrained_path={pretrained}',
                '--config.lr.base=0', '--config.checkpoint_every=1000', steps=2), tmp_path)
  config = tiny_config.for_data(data_overrides)
  num_classes = 10 if data_overrides['dataset'] == 'cifar10' else 3
  expected, _ = loader.load_pretrained(reference / 'model.npz',
                                       step_lib.create_model(config, num_classes), (32, 32),
                                       model_name=config.model_name, seed=config.seed)
  assert_bit_identical(flat_export(tmp_path / 'workdir'),
                       checkpoint.unstack_encoder(checkpoint.flatten(expected)))
  assert 'Loaded pre-trained parameters from gs://test-bucket/pretrained/model.npz' in (
      tmp_path / 'workdir' / 'train.0.log').read_text()


def test_a_missing_bucket_fails_before_the_first_step(gcs_server, tmp_path, data_overrides):
  process = Process(main_args('gs://no-such-bucket/run', data_overrides), tmp_path)
  assert process.finish() == 1
  out = process.output()
  assert 'Cannot use gs://no-such-bucket/run for writing' in out
  assert 'check that the bucket exists' in out
  assert 'Training ' not in out and 'compil' not in out.lower()


def test_sigterm_saves_the_reached_step_and_a_second_sigterm_keeps_it(gcs_server, reference,
                                                                       tmp_path, data_overrides):
  workdir = 'gs://test-bucket/preempted'
  args = main_args(workdir, data_overrides, '--config.checkpoint_every=1000')  # Periodic off.

  # A SIGTERM mid-run: the checkpoint of the step reached, exit status 75, how to resume.
  first = Process(args, tmp_path / 'first')
  first.wait_for(rf'step 4/{STEPS} ')
  first.proc.send_signal(signal.SIGTERM)
  assert first.finish() == preemption.EXIT_CODE, first.tail()
  saved = int(first.wait_for(r'Preempted: saved the checkpoint of step (\d+) in '
                             'gs://test-bucket/preempted').group(1))
  assert 4 <= saved < STEPS
  assert paths.listdir(workdir + '/checkpoints') == [str(saved)]
  assert f'To resume: {sys.executable} -m vit_jax.main --config=' in first.output()
  assert not paths.exists(workdir + '/model.npz')

  # Resumed; SIGTERM again, and once more while the save is under way: the process stops at
  # once, in the middle of the save (the server is held still until the second signal).
  second = Process(args, tmp_path / 'second')
  second.wait_for(rf'Resumed from the checkpoint of step {saved} ')
  second.wait_for(rf'step \d+/{STEPS} ')
  gcs_server.pause()
  try:
    second.proc.send_signal(signal.SIGTERM)
    interrupted = int(second.wait_for(r'saving the checkpoint of step (\d+)').group(1))
  finally:
    gcs_server.resume()
  time.sleep(0.05)  # Some of the save's requests go through.
  second.proc.send_signal(signal.SIGTERM)
  assert second.finish() == -signal.SIGTERM, second.tail()
  assert interrupted > saved

  # The unfinished step is not restored: the restart resumes from the first save, exactly.
  out = run(args, tmp_path / 'third')
  assert f'Resumed from the checkpoint of step {saved} ' in out
  assert_bit_identical(flat_export(workdir), flat_export(reference))


def test_two_processes_without_a_shared_folder_agree_on_the_preempted_step(
    gcs_server, tmp_path, data_overrides):
  """jax.distributed's preemption service: a SIGTERM to process 1 only; both save one step."""

  def start(workdir, folder):
    from test_distributed import _free_port  # pylint: disable=g-import-not-at-top
    args = main_args(workdir, data_overrides, '--config.checkpoint_every=1000',
                     f'--coordinator_address=127.0.0.1:{_free_port()}', '--num_processes=2')
    return [Process(args + [f'--process_id={i}'], tmp_path / folder / f'host{i}',
                    XLA_FLAGS='--xla_force_host_platform_device_count=1') for i in (0, 1)]

  def finish(hosts, status=0):
    for host in hosts:
      assert host.finish() == status, host.tail()
    return [host.output() for host in hosts]

  finish(start('gs://test-bucket/two_straight', 'straight'))

  workdir = 'gs://test-bucket/two_preempted'
  hosts = start(workdir, 'preempted')
  hosts[0].wait_for(rf'step 4/{STEPS} ')
  hosts[1].proc.send_signal(signal.SIGTERM)
  outputs = finish(hosts, preemption.EXIT_CODE)
  steps = {re.search(r'Preempted: saved the checkpoint of step (\d+)', out).group(1)
           for out in outputs}
  assert len(steps) == 1, outputs  # The same step on both hosts...
  assert paths.listdir(workdir + '/checkpoints') == list(steps)  # ...saved once, together.

  (step,) = steps
  outputs = finish(start(workdir, 'resumed'))
  for out in outputs:
    assert f'Resumed from the checkpoint of step {step} ' in out
  assert 'Final:' in outputs[0] and 'Final:' not in outputs[1]
  assert_bit_identical(flat_export(workdir), flat_export('gs://test-bucket/two_straight'))
  held = paths.listdir(workdir)
  assert {'train.0.log', 'train.1.log', 'model.npz', 'config.json'} <= set(held)
  for host in ('host0', 'host1'):
    for run_folder in ('preempted', 'resumed'):
      assert not local_leftovers(tmp_path / run_folder / host)
