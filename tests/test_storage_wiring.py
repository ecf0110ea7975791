"""Every file the library reads or writes goes through `checkpoint.paths` (a scan of the source),
data paths through TensorFlow's file systems (an image folder on `ram://`), and the workdir's
files and the staged log and events on `gs://` (the GCS server on localhost)."""

import ast
import json
import os
import pathlib
import uuid

import jax
import numpy as np
import pytest

from helpers import REPO, make_image_folder
import ram_fs
import tiny_config
from vit_jax.checkpoint import paths
from vit_jax.data import input_pipeline
from vit_jax.training import staging as staging_lib
from vit_jax.training import workdir as workdir_lib

PACKAGE = pathlib.Path(REPO) / 'vit_jax'

# ---------------------------------------------------------------------------------------------
# No local file function on a user's path.

# os.path functions that only take strings apart; every other one touches the file system (or,
# as join/abspath/dirname, misreads a URL: os.path.abspath('gs://b/x') is '<cwd>/gs:/b/x').
_STRING_ONLY = frozenset({'splitext', 'basename', 'sep', 'isabs', 'normpath'})
_OS_FILE_FUNCTIONS = frozenset({'makedirs', 'mkdir', 'listdir', 'remove', 'unlink', 'replace',
                                'rename', 'walk', 'scandir', 'stat', 'rmdir'})
# Modules that may use them, and why: none of these paths is a user's file.
ALLOWED = {
    'vit_jax/checkpoint/paths.py': 'the path layer itself (its local branch)',
    'vit_jax/checkpoint/hub.py': "huggingface_hub's local cache",
    'vit_jax/training/staging.py': 'its local staging folder (tempfile)',
    'vit_jax/training/config_args.py': 'config files are Python modules, imported from disk',
    'vit_jax/data/labels.py': "the package's own label lists",
    'vit_jax/aot/targets.py': "the package's own target specs",
    'vit_jax/data/image_io.py': ('read_image of a local path for research code (data/ may not '
                                 'import checkpoint/); the tools hand it files opened through '
                                 'paths'),
    'vit_jax/benchmarking/resume.py': 'generated images in a temporary folder',
    'vit_jax/benchmarking/preprocess_speed.py': 'generated images in a temporary folder',
}


def local_file_calls(source: str) -> list[tuple[int, str]]:
  """(line, call) of every `open`, file-touching `os.path.*`/`os.*`, `glob.*` and `shutil.*`
  call in Python `source`."""
  found = []
  for node in ast.walk(ast.parse(source)):
    if not isinstance(node, ast.Call):
      continue
    func = node.func
    if isinstance(func, ast.Name) and func.id == 'open':
      found.append((node.lineno, 'open'))
    elif isinstance(func, ast.Attribute):
      owner = func.value
      if (isinstance(owner, ast.Attribute) and isinstance(owner.value, ast.Name)
          and owner.value.id == 'os' and owner.attr == 'path'
          and func.attr not in _STRING_ONLY):
        found.append((node.lineno, f'os.path.{func.attr}'))
      elif isinstance(owner, ast.Name) and (
          (owner.id == 'os' and func.attr in _OS_FILE_FUNCTIONS)
          or owner.id in ('glob', 'shutil')):
        found.append((node.lineno, f'{owner.id}.{func.attr}'))
  return found


def test_the_scan_finds_every_kind_of_local_file_call():
  source = ('import os, glob, shutil\nopen("x")\nos.path.exists("x")\nos.path.join("a", "b")\n'
            'os.makedirs("x")\nglob.glob("*")\nshutil.copyfile("a", "b")\nos.path.splitext("x")\n'
            'paths.open_read("x")\n')
  assert local_file_calls(source) == [
      (2, 'open'), (3, 'os.path.exists'), (4, 'os.path.join'), (5, 'os.makedirs'),
      (6, 'glob.glob'), (7, 'shutil.copyfile')]


def test_no_local_file_calls_outside_the_allowed_modules():
  found = []
  for path in sorted(PACKAGE.rglob('*.py')):
    name = path.relative_to(REPO).as_posix()
    if name in ALLOWED:
      continue
    found += [f'{name}:{line}: {call}' for line, call in local_file_calls(path.read_text())]
  assert not found, 'Use vit_jax.checkpoint.paths (or tf.io.gfile for data):\n' + '\n'.join(found)
  stale = [name for name in ALLOWED if not local_file_calls((pathlib.Path(REPO) / name)
                                                            .read_text())]
  assert not stale, f'Allowed but no longer needed: {stale}'


# ---------------------------------------------------------------------------------------------
# Data paths: TensorFlow's file systems only.


def test_an_image_folder_on_ram_fs_trains_and_evaluates_without_local_io(tmp_path):
  local = make_image_folder(str(tmp_path / 'images'), splits=(('train', 8), ('test', 4)))
  remote = ram_fs.copy_tree(local, f'ram://images-{uuid.uuid4().hex}')
  config = tiny_config.for_data({'dataset': 'imagefolder', 'data_dir': local}, batch_size=8)

  def batches(root):
    train = input_pipeline.get_source('imagefolder', 'train', data_dir=root)
    test = input_pipeline.get_source('imagefolder', 'test', data_dir=root)
    stream = input_pipeline.train_dataset(config, train, 8, start_step=0)
    evals, _ = input_pipeline.eval_dataset(test, 8, pp=config.pp_eval, image_size=32,
                                           skip_corrupt_images=False)
    return (train.class_names, list(stream.take(2).as_numpy_iterator()),
            list(evals.as_numpy_iterator()))

  with ram_fs.no_local_io():
    names, train, evals = batches(remote)
  local_names, local_train, local_evals = batches(local)
  assert names == local_names == ('class_0', 'class_1', 'class_2')
  for got, expected in zip(train + evals, local_train + local_evals):
    jax.tree.map(np.testing.assert_array_equal, got, expected)


# ---------------------------------------------------------------------------------------------
# The workdir's files and the staged log and events on gs://.


def test_workdir_files_on_gs(gcs_root):
  workdir = gcs_root + '/run'
  assert workdir_lib.skipped_images_at(workdir, 8) == 0
  workdir_lib.save_skipped_images(workdir, 8, 3)
  workdir_lib.save_skipped_images(workdir, 16, 5)
  assert [workdir_lib.skipped_images_at(workdir, s) for s in (8, 16, 24)] == [3, 5, 0]
  assert json.loads(paths.read_text(workdir + '/skipped_images.json')) == {'8': 3, '16': 5}
  config = tiny_config.get_config()
  workdir_lib.write_config(workdir, config)
  assert json.loads(paths.read_text(workdir + '/config.json'))['model_name'] == 'ViT-CIFAR_4'
  manager = workdir_lib.checkpoint_manager(workdir, keep=2)
  assert str(manager.directory) == workdir + '/checkpoints'
  manager.close()


def test_staging_copies_new_and_changed_files_to_gs_and_cleans_up(gcs_root):
  with staging_lib.Staging(gcs_root, interval_s=3600) as staging:
    assert staging.remote and not staging.folder.startswith('gs:')
    os.makedirs(os.path.join(staging.folder, 'eval'))
    with open(os.path.join(staging.folder, 'train.0.log'), 'w') as f:
      f.write('first\n')
    with open(os.path.join(staging.folder, 'eval', 'events'), 'w') as f:
      f.write('e')
    staging.sync()
    assert paths.read_text(gcs_root + '/train.0.log') == 'first\n'
    assert paths.read_text(gcs_root + '/eval/events') == 'e'
    paths.remove(gcs_root + '/eval/events')  # Unchanged: not copied again.
    with open(os.path.join(staging.folder, 'train.0.log'), 'a') as f:
      f.write('second\n')
    staging.sync()
    assert not paths.exists(gcs_root + '/eval/events')
    assert paths.read_text(gcs_root + '/train.0.log') == 'first\nsecond\n'
    with open(os.path.join(staging.folder, 'train.0.log'), 'a') as f:
      f.write('last\n')
    folder = staging.folder
  assert paths.read_text(gcs_root + '/train.0.log') == 'first\nsecond\nlast\n'  # On exit.
  assert not os.path.exists(folder)


def test_staging_of_a_local_workdir_is_the_workdir(tmp_path):
  with staging_lib.Staging(str(tmp_path)) as staging:
    assert staging.folder == str(tmp_path) and not staging.remote


def test_a_failed_copy_is_logged_and_the_job_goes_on(gcs_server):
  with staging_lib.Staging('gs://no-such-bucket/run', interval_s=3600) as staging:
    with open(os.path.join(staging.folder, 'train.0.log'), 'w') as f:
      f.write('x')
    staging.sync()  # No exception: the log says what failed.


@pytest.mark.parametrize('where', ['local', 'gs'])
def test_a_job_fails_at_once_on_an_unwritable_workdir(where, tmp_path, request, data_overrides):
  from vit_jax.training import train  # pylint: disable=g-import-not-at-top
  if where == 'gs':
    request.getfixturevalue('gcs_server')
    workdir = 'gs://no-such-bucket/run'
  else:
    (tmp_path / 'file').write_text('a file where the workdir should be')
    workdir = str(tmp_path / 'file' / 'run')
  with pytest.raises(paths.StorageError, match=f'Cannot use {workdir} for writing'):
    train.train_and_evaluate(tiny_config.for_data(data_overrides), workdir)
