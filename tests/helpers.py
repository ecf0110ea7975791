"""Helpers shared by the tests."""

import importlib.util
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_TFDS = os.path.join(REPO, '..', 'shared', 'data', 'tfds')


def cifar_dir():
  """The TFDS data directory holding CIFAR-10 offline, or None.

  `VIT_JAX_TEST_DATA=generated` forces None, so the suite runs as on a machine without the
  offline copy (CI runs the data tests both ways).
  """
  if os.environ.get('VIT_JAX_TEST_DATA') == 'generated':
    return None
  for candidate in (os.environ.get('TFDS_DATA_DIR'), SHARED_TFDS):
    if candidate and os.path.isdir(os.path.join(candidate, 'cifar10')):
      return os.path.abspath(candidate)
  return None


def randomize(params, seed: int = 0, scale: float = 0.02):
  """Adds noise to every leaf, so zero-initialised heads and unit norms carry information."""
  leaves, treedef = jax.tree.flatten(params)
  rng = np.random.default_rng(seed)
  noisy = [np.asarray(x) + scale * rng.standard_normal(np.shape(x)).astype(np.float32)
           for x in leaves]
  return jax.tree.unflatten(treedef, noisy)


def make_image_folder(root, splits=(('train', 24), ('test', 10)), num_classes=3, size=32):
  """Writes ROOT/<split>/<class>/*.png: class k is a noisy image whose k-th third of rows is bright.

  Rows, not columns, so the default `flip_lr` augmentation keeps the classes apart.

  A tiny dataset that a small model can learn, for machines without the offline CIFAR-10.
  """
  import os  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for split, per_class in splits:
    for label in range(num_classes):
      folder = os.path.join(root, split, f'class_{label}')
      os.makedirs(folder, exist_ok=True)
      for i in range(per_class):
        image = rng.integers(0, 100, (size, size, 3))
        band = size // num_classes
        image[label * band:(label + 1) * band] += 150
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(
            os.path.join(folder, f'{i}.png'))
  return root


def run_main(workdir, data_overrides, extra=(), kill_after_checkpoint=None):
  args = [sys.executable, '-m', 'vit_jax.main',
          f'--config={os.path.join(REPO, "tests", "tiny_config.py")}:{data_overrides["dataset"]}',
          f'--workdir={workdir}', f'--config.data_dir={data_overrides["data_dir"]}', *extra]
  env = {**os.environ, 'PYTHONPATH': os.pathsep.join([REPO, os.environ.get('PYTHONPATH', '')])}
  proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
  if kill_after_checkpoint is None:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    return out
  target = os.path.join(workdir, 'checkpoints', str(kill_after_checkpoint))
  deadline = time.time() + 600
  while not os.path.isdir(target) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  assert os.path.isdir(target), 'the run ended before writing the checkpoint to kill after'
  return None


def config_module(name):
  """The module of experiment config `configs/<name>` (config files are loaded by path)."""
  path = os.path.join(REPO, 'configs', name)
  spec = importlib.util.spec_from_file_location(name[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_config(name, arg=''):
  """`configs/<name>:<arg>` as `--config` would load it."""
  module = config_module(name)
  return module.get_config(arg) if arg else module.get_config()
