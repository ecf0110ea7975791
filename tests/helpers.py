"""Helpers shared by the tests."""

import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
from PIL import Image

from vit_jax import models
from vit_jax.training import config_args

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


def random_images(n: int, size: int, seed: int = 1) -> np.ndarray:
  """`n` square images, uniform in [-1, 1] (the ViT input range), float32 NHWC."""
  return np.random.default_rng(seed).uniform(-1., 1., (n, size, size, 3)).astype(np.float32)


def param_shapes(model, size, collection: str = 'params'):
  """`collection` of `model`'s variables for `size` images, as shapes (nothing computed)."""
  size = (size, size) if isinstance(size, int) else tuple(size)
  return models.init_shapes(model, size)[collection]


def count_params(model, size) -> int:
  """Number of parameters of `model` for `size` images."""
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(param_shapes(model, size)))


def random_params(model, images, seed: int = 0, scale: float = 0.02,
                  norm_scale: float | None = None):
  """Random parameters of `model`'s shapes, without compiling its `init` (slow on CPU).

  Norm scales are 1 + N(0, norm_scale^2) (default `scale`), everything else, zero-initialised
  heads and biases included, N(0, scale^2): standardized convs and norms turn them into
  well-scaled activations.

  Args:
    model: a Flax model taking NHWC images.
    images: the input side (int), (height, width), or a batch of images.
    seed: numpy seed of the draws.
    scale: standard deviation of the weights.
    norm_scale: standard deviation of the norm scales around 1.
  """
  size = images if isinstance(images, (int, tuple)) else tuple(np.shape(images)[1:3])
  norm_scale = scale if norm_scale is None else norm_scale
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    noise = rng.standard_normal(leaf.shape).astype(np.float32)
    return 1. + norm_scale * noise if path[-1].key == 'scale' else scale * noise

  return jax.tree_util.tree_map_with_path(draw, param_shapes(model, size))


def init_key():
  """An `rbg` key: it compiles far faster than threefry on CPU, for tests that need no stream."""
  return jax.random.key(0, impl='rbg')


def job_for(config, num_classes, mesh=None, **kwargs):
  """The job (`training.job.build`) of the experiment config `config` for `num_classes`
  classes on `mesh` (default: `config.mesh` over all devices); `kwargs` go to `build` (e.g.
  `teacher`)."""
  from vit_jax.training import job as job_lib  # pylint: disable=g-import-not-at-top
  from vit_jax.training import settings  # pylint: disable=g-import-not-at-top
  from vit_jax.training import sharding  # pylint: disable=g-import-not-at-top
  mesh = mesh if mesh is not None else sharding.make_mesh(config.mesh)
  prepared = settings.prepare(config, settings.DataFacts(num_classes=num_classes), mesh)
  with jax.set_mesh(mesh):
    return job_lib.build(prepared, mesh, **kwargs)


def stepper(job):
  """`job.train_step` on a copy of the state (the job's step donates it), so that a test can
  step the same state twice."""
  def step(state, batch, teacher_variables=None):
    with jax.set_mesh(job.mesh):
      return job.train_step(jax.tree.map(jax.numpy.copy, state), batch, teacher_variables)
  return step


def state_and_step(config, num_classes):
  """(a fresh TrainState, the train step) of `config`'s job (`job_for`, `stepper`)."""
  job = job_for(config, num_classes)
  return job.init_state(), stepper(job)


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


def run_main(workdir, data_overrides, extra=(), kill_after_checkpoint=None, evals=''):
  """`python -m vit_jax.main` on the tiny config; `evals`: its `evals=` argument."""
  arg = data_overrides['dataset'] + (f',evals={evals}' if evals else '')
  args = [sys.executable, '-m', 'vit_jax.main',
          f'--config={os.path.join(REPO, "tests", "tiny_config.py")}:{arg}',
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
  """The module of experiment config `configs/<name>`."""
  return config_args.config_module(os.path.join(REPO, 'configs', name))


def parse_as_main(config_arg, *overrides):
  """`--config=config_arg` and command-line overrides parsed by absl's config_flags, as `main`
  parses them (the config locked: overrides may set fields, not add them)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  argv = ['main', f'--config={config_arg}', *overrides]
  flag_values = flags.FlagValues()
  # config_flags reads the override flags from argv when the flag is defined.
  config_flags.DEFINE_config_file('config', None, 'x', flag_values=flag_values,
                                  lock_config=True, sys_argv=argv)
  flag_values(argv)
  return flag_values.config


def load_config(name, arg=''):
  """`configs/<name>:<arg>` as `--config` would load it."""
  path = os.path.join(REPO, 'configs', name)
  return config_args.load_config(f'{path}:{arg}' if arg else path)


_ENV = {**os.environ, 'PYTHONPATH': os.pathsep.join([REPO, os.environ.get('PYTHONPATH', '')])}


def run_python(*args, timeout=900):
  """`python ARGS` in the repository as a user runs it; its stdout (asserts it succeeded)."""
  run = subprocess.run([sys.executable, *map(str, args)], cwd=REPO, env=_ENV,
                       capture_output=True, text=True, timeout=timeout)
  assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
  return run.stdout


def classify_cli(model_path, image_paths, *flags):
  """{path: (top-1 index, top-1 name)} and the header line, from the classify command."""
  out = run_python('-m', 'vit_jax.tools.classify', f'--checkpoint={model_path}', '--top_k=1',
                   *flags, *map(str, image_paths)).splitlines()
  top1 = {}
  for path in map(str, image_paths):
    line = out[out.index(path) + 1]
    match = re.match(r'\s+1\.\s+[\d.]+%\s+(.*)\s+\[(\d+)\]$', line)
    assert match, line
    top1[path] = (int(match.group(2)), match.group(1).strip())
  return top1, out[0]


def write_eval_pngs(config, folder, limit):
  """The first `limit` images of `config`'s `test` evaluator as PNG files <index>_<label>.png."""
  from vit_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  source = input_pipeline.get_source(config.dataset, config.evals.test.split,
                                     data_dir=config.data_dir)
  paths, labels = [], []
  for i, ex in enumerate(source.dataset.take(limit).as_numpy_iterator()):
    path = os.path.join(folder, f'{i}_{int(ex["label"])}.png')
    Image.fromarray(ex['image']).save(path)
    paths.append(path)
    labels.append(int(ex['label']))
  return paths, np.array(labels)
