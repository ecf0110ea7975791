"""TensorFlow's in-memory `ram://` file system, to prove that data paths never meet `os`/`open`.

Data paths (a TFDS `data_dir`, an image folder) stay with TensorFlow's file systems, which serve
`gs://` on a pod. No emulator stands in for `tf.io.gfile`'s `gs://`, but `ram://` goes through
the same `tf.io.gfile` code and is invisible to Python's `os` and `open`: a pipeline that reads
data from `ram://` under `no_local_io()` touched it only through TensorFlow.
"""

from __future__ import annotations

import builtins
import contextlib
import os
from typing import Iterator

import pytest


def copy_tree(local: str, url: str) -> str:
  """Copies local folder `local` (recursively) to `url` (`ram://...`); returns `url`."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  for folder, _, names in os.walk(local):
    rel = os.path.relpath(folder, local)
    target = url.rstrip('/') + ('' if rel == '.' else '/' + rel.replace(os.sep, '/'))
    tf.io.gfile.makedirs(target)
    for name in names:
      tf.io.gfile.copy(os.path.join(folder, name), f'{target}/{name}', overwrite=True)
  return url


_GUARDED = (
    (os.path, ('exists', 'isdir', 'isfile', 'getsize', 'abspath', 'realpath')),
    (os, ('listdir', 'makedirs', 'stat', 'scandir', 'walk', 'remove', 'replace')),
    (builtins, ('open',)),
)


@contextlib.contextmanager
def no_local_io(prefix: str = 'ram://') -> Iterator[None]:
  """Within the block, `os`/`os.path`/`open` called on a path starting with `prefix` raise
  AssertionError naming the call (unguarded, they would quietly answer "no such file")."""
  with pytest.MonkeyPatch.context() as patch:
    for module, names in _GUARDED:
      for name in names:
        original = getattr(module, name)

        def guarded(*args, _original=original, _name=name, **kwargs):
          for arg in args[:2]:
            if isinstance(arg, (str, os.PathLike)) and os.fspath(arg).startswith(prefix):
              raise AssertionError(f'{_name}({os.fspath(arg)!r}): a data path reached Python\'s '
                                   'local file functions')
          return _original(*args, **kwargs)

        patch.setattr(module, name, guarded)
    yield
