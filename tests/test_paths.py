"""The path layer (`checkpoint.paths`) on a local folder and on `gs://` (a GCS server on
localhost, `gcs_server`): the same calls, the same results, and no half-written file either way.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from vit_jax.checkpoint import paths


@pytest.fixture(params=['local', 'gs'])
def root(request, tmp_path):
  if request.param == 'local':
    return str(tmp_path / 'root')
  return request.getfixturevalue('gcs_root')


def _fs():
  import fsspec  # pylint: disable=g-import-not-at-top
  return fsspec.filesystem('gs', use_listings_cache=False)


def test_is_remote_and_absolute(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert paths.is_remote('gs://b/run') and paths.is_remote('s3://b/k')
  assert not paths.is_remote('run') and not paths.is_remote('/abs/run')
  assert not paths.is_remote('file:///abs/run') and not paths.is_remote('hf://org/repo')
  assert paths.absolute('gs://b/run') == 'gs://b/run'  # Never `<cwd>/gs:/b/run`.
  assert paths.absolute('run') == str(tmp_path / 'run')
  assert paths.absolute('file:///abs/run') == '/abs/run'
  assert paths.join('gs://b', 'run', 'checkpoints') == 'gs://b/run/checkpoints'
  assert paths.parent('gs://b/run/model.npz') == 'gs://b/run'
  assert str(paths.orbax_path('gs://b/run')) == 'gs://b/run'
  assert str(paths.orbax_path('run')) == str(tmp_path / 'run')


def test_hub_names_are_refused_with_the_way_to_resolve_them():
  with pytest.raises(ValueError, match='hub.resolve'):
    paths.exists('hf://timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k')


def test_files_and_folders(root):
  assert not paths.exists(root) and not paths.isdir(root)
  paths.makedirs(root)
  paths.write_text(paths.join(root, 'a.json'), json.dumps({'step': 3}))
  paths.write_bytes(paths.join(root, 'sub', 'b.bin'), b'\x00\r\n\r')
  paths.write_bytes(paths.join(root, 'sub', 'deeper', 'c.bin'), b'')
  assert paths.exists(root) and paths.isdir(root)
  assert paths.isdir(paths.join(root, 'sub')) and not paths.isdir(paths.join(root, 'a.json'))
  assert paths.listdir(root) == ['a.json', 'sub']
  assert paths.listdir(paths.join(root, 'sub')) == ['b.bin', 'deeper']
  assert json.loads(paths.read_text(paths.join(root, 'a.json'))) == {'step': 3}
  assert paths.size(paths.join(root, 'sub', 'b.bin')) == 4
  assert paths.size(root) == 4 + len(json.dumps({'step': 3}))
  assert paths.read_bytes(paths.join(root, 'sub', 'b.bin')) == b'\x00\r\n\r'
  assert paths.read_bytes(paths.join(root, 'sub', 'deeper', 'c.bin')) == b''
  assert paths.glob(paths.join(root, '**', '*.bin')) == [
      paths.join(root, 'sub', 'b.bin'), paths.join(root, 'sub', 'deeper', 'c.bin')]
  assert paths.glob(paths.join(root, 'sub', '**')) == [
      paths.join(root, 'sub'), paths.join(root, 'sub', 'b.bin'), paths.join(root, 'sub', 'deeper'),
      paths.join(root, 'sub', 'deeper', 'c.bin')]
  with paths.open_read(paths.join(root, 'a.json'), 'r') as f:
    assert json.load(f) == {'step': 3}
  paths.remove(paths.join(root, 'a.json'))
  assert not paths.exists(paths.join(root, 'a.json'))
  for missing in (paths.join(root, 'nope.bin'), paths.join(root, 'sub', 'nope')):
    with pytest.raises(FileNotFoundError):
      paths.read_bytes(missing)
  with pytest.raises(FileNotFoundError):
    paths.listdir(paths.join(root, 'nope'))


def test_folder_placeholder_objects_are_no_entries(gcs_root):
  _fs().pipe_file(f'{gcs_root}/run/', b'')  # What a console's "create folder" leaves.
  paths.write_bytes(f'{gcs_root}/run/a.bin', b'a')
  assert paths.listdir(f'{gcs_root}/run') == ['a.bin']
  assert paths.glob(f'{gcs_root}/**') == [gcs_root, f'{gcs_root}/run', f'{gcs_root}/run/a.bin']


def test_listings_see_what_another_client_wrote(gcs_server, gcs_root):
  """Hosts share a bucket: neither the layer nor Orbax's epath may answer from a stale listing."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  from storage_servers import object_url  # pylint: disable=g-import-not-at-top
  import urllib.request  # pylint: disable=g-import-not-at-top
  paths.write_bytes(f'{gcs_root}/a', b'a')
  assert paths.listdir(gcs_root) == ['a'] == [p.name for p in epath.Path(gcs_root).iterdir()]
  name = gcs_root[len('gs://test-bucket/'):] + '/b'
  urllib.request.urlopen(urllib.request.Request(object_url(
      gcs_server.url, 'test-bucket', upload=True, query={'uploadType': 'media', 'name': name}),
      data=b'b', method='POST')).read()  # Another host's upload.
  assert paths.listdir(gcs_root) == ['a', 'b']
  assert sorted(p.name for p in epath.Path(gcs_root).iterdir()) == ['a', 'b']
  assert paths.exists(f'{gcs_root}/b') and epath.Path(f'{gcs_root}/b').exists()


def test_numpy_files_through_the_layer(root):
  arrays = {'a': np.arange(12, dtype=np.float32).reshape(3, 4), 'b': np.array([1, 2], np.int8)}
  path = paths.join(root, 'model.npz')
  with paths.open_write(path) as f:  # np.savez on a file object...
    np.savez(f, **arrays)
  with paths.open_read(path) as f, np.load(f) as data:  # ...and np.load, which seeks in it.
    assert {k: data[k].tolist() for k in data.files} == {k: v.tolist() for k, v in arrays.items()}
  other = paths.join(root, 'by_name.npz')
  with paths.atomic_local_path(other) as tmp:  # Writers that want a file name.
    assert tmp.endswith('.npz')
    np.savez(tmp, **arrays)
  with paths.local_copy(other) as local:  # Readers that want one.
    with np.load(local) as data:
      np.testing.assert_array_equal(data['a'], arrays['a'])
  assert paths.listdir(root) == ['by_name.npz', 'model.npz']  # No temporary left behind.


@pytest.mark.parametrize('size', [100, 6 << 20])  # One request; resumable (> 5 MiB) on gs://.
def test_failed_write_leaves_no_file_and_the_old_one_intact(root, size):
  old, new = paths.join(root, 'old.bin'), paths.join(root, 'new.bin')
  paths.write_bytes(old, b'old contents')
  for path in (old, new):
    with pytest.raises(RuntimeError, match='writer failed'):
      with paths.open_write(path) as f:
        f.write(b'x' * size)
        raise RuntimeError('writer failed')
  assert paths.read_bytes(old) == b'old contents'
  assert not paths.exists(new)
  assert paths.listdir(root) == ['old.bin']


def test_fsspec_files_commit_a_failed_write(gcs_root):
  """Why the layer does not write through fsspec's file objects: on this gcsfs, leaving the
  `with` block by an exception still uploads what was written."""
  path = f'{gcs_root}/partial.bin'
  with pytest.raises(RuntimeError):
    with _fs().open(path, 'wb') as f:
      f.write(b'half')
      raise RuntimeError('writer failed')
  assert _fs().cat_file(path) == b'half'


def test_local_copy_of_a_folder(root):
  paths.write_text(paths.join(root, 'hf', 'config.json'), '{}')
  paths.write_bytes(paths.join(root, 'hf', 'model.safetensors'), b'weights')
  with paths.local_copy(paths.join(root, 'hf')) as local:
    assert sorted(os.listdir(local)) == ['config.json', 'model.safetensors']
    with open(os.path.join(local, 'model.safetensors'), 'rb') as f:
      assert f.read() == b'weights'
  if paths.is_remote(root):
    assert not os.path.exists(local)  # The download is deleted after the block.
  with pytest.raises(FileNotFoundError):
    with paths.local_copy(paths.join(root, 'nope')):
      pass


def test_write_probe(root):
  paths.probe_writable(root)
  assert not paths.exists(root) or paths.listdir(root) == []  # Nothing left behind.


def test_write_probe_names_a_missing_bucket(gcs_server):
  with pytest.raises(paths.StorageError, match=r'gs://no-such-bucket/run.*FileNotFoundError'):
    paths.probe_writable('gs://no-such-bucket/run')
  assert not _fs().exists('gs://no-such-bucket')  # Never created.


def test_write_probe_names_an_unwritable_folder(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('not a folder')
  with pytest.raises(paths.StorageError, match=f'{blocker}/run'):
    paths.probe_writable(str(blocker / 'run'))


_NO_CLIENTS = textwrap.dedent('''
    import sys
    for client in ('gcsfs', 's3fs', 'huggingface_hub'):
      sys.modules[client] = None  # Not installed.
    from vit_jax.checkpoint import hub, paths
    for call in (lambda: paths.exists('gs://b/x'), lambda: paths.exists('s3://b/x'),
                 lambda: hub.fetch('hf://org/repo')):
      try:
        call()
      except paths.MissingClientError as e:
        print(e)
''')


def test_a_missing_client_names_the_install_command():
  out = subprocess.run([sys.executable, '-c', _NO_CLIENTS], capture_output=True, text=True,
                       check=True).stdout.splitlines()
  assert out == ['gs://b/x: gs:// paths need gcsfs: pip install "vit_jax[cloud]"',
                 's3://b/x: s3:// paths need s3fs: pip install s3fs',
                 'Hub names need huggingface_hub: pip install "vit_jax[cloud]"']
