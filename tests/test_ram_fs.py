"""`ram_fs`: TensorFlow sees a copied folder on `ram://`; Python's local file functions, guarded,
refuse it by name."""

import os

import pytest

import ram_fs


def test_ram_folder_is_tensorflows_alone(tmp_path):
  tf = pytest.importorskip('tensorflow')
  (tmp_path / 'train' / 'cat').mkdir(parents=True)
  (tmp_path / 'train' / 'cat' / '1.png').write_bytes(b'png bytes')
  url = ram_fs.copy_tree(str(tmp_path), 'ram://ram_fs_test')
  with ram_fs.no_local_io():
    assert tf.io.gfile.glob(f'{url}/train/*/*.png') == [f'{url}/train/cat/1.png']
    assert tf.io.read_file(f'{url}/train/cat/1.png').numpy() == b'png bytes'
    for call in (lambda: os.path.isdir(url), lambda: os.listdir(f'{url}/train'),
                 lambda: open(f'{url}/train/cat/1.png', 'rb')):
      with pytest.raises(AssertionError, match='reached Python'):
        call()
    assert os.path.isdir(str(tmp_path))  # Local paths are untouched.
