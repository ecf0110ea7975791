"""Every file the library reads or writes, local or on object storage, through one layer.

A path is a string: a local path (or `file://` URL), or a URL of an object store that fsspec
serves (`gs://bucket/key` through gcsfs, also `s3://`, `az://`, ... with their clients).
Hugging Face Hub names (`hf://ORG/REPO`, `hf-hub:ORG/REPO`) are not storage paths: resolve them
to a local file or folder with `checkpoint.hub.resolve` first; the functions here refuse them.

Remote paths go through fsspec itself rather than `etils.epath`: with TensorFlow importable
(it is, for the input pipeline) epath serves `gs://` through `tf.io.gfile`, which no emulator
can stand in for, and epath's gcsfs keeps listings cached, so a listing could miss what another
host or tensorstore wrote. Here listings are never cached. Orbax takes `orbax_path(path)`, an
epath.Path, and keeps epath's own choice of client.

Writers never leave a half-written file for a reader (every writer: `atomic_local_path`):
- local: the content goes to a temporary file beside the target, renamed over it when
  complete (a rename within a folder is atomic);
- object stores have no rename; an object appears, whole, when its upload completes. The
  content goes to a local temporary file first and is uploaded in one `put_file` only once
  the writer has finished: a single request below 5 MiB, else one resumable upload that is
  finalised by its last chunk and cancelled on error. A failed writer uploads nothing, and
  the older object stays intact. (fsspec's own write files are not used: they upload what
  was written when closed, even when the `with` block raised.)

Object stores have no folders: `makedirs` is a no-op there, `isdir` is true where objects
exist under the prefix, and a missing bucket is never created (`probe_writable` reports it).
"""

from __future__ import annotations

import contextlib
import glob as glob_lib
import logging
import os
import posixpath
import shutil
import tempfile
import uuid
from typing import IO, Any, Iterator

PathLike = str | os.PathLike
HUB_PREFIXES = ('hf://', 'hf-hub:')
CLOUD_INSTALL = 'pip install "vit_jax[cloud]"'
# The fsspec client of each protocol, for the message when it is missing.
_CLIENTS = {'gs': 'gcsfs', 'gcs': 'gcsfs', 's3': 's3fs', 'az': 'adlfs', 'abfs': 'adlfs'}


class StorageError(OSError):
  """A storage location that cannot be used: a missing bucket, no credentials, no permission."""


class MissingClientError(ImportError):
  """The client library of a storage protocol or of the Hub is not installed."""


def is_hub_name(path: PathLike) -> bool:
  """Whether `path` names weights on the Hugging Face Hub (`hf://...`, `hf-hub:...`)."""
  return isinstance(path, str) and path.startswith(HUB_PREFIXES)


def is_remote(path: PathLike) -> bool:
  """Whether `path` is a URL of an object store (`gs://...`), not a local path.

  Code that must treat the two apart asks this (never `os.path.abspath` on a URL).
  """
  path = os.fspath(path)
  return '://' in path and not path.startswith('file://') and not is_hub_name(path)


def _local(path: PathLike) -> str:
  path = os.fspath(path)
  if is_hub_name(path):
    raise ValueError(f'{path} is a Hugging Face Hub name, not a storage path: resolve it with '
                     'vit_jax.checkpoint.hub.resolve first')
  return path[len('file://'):] if path.startswith('file://') else path


def _filesystem(path: str) -> Any:
  """The fsspec file system serving remote `path`, its listings never cached."""
  protocol = path.split('://', 1)[0]
  try:
    import fsspec  # pylint: disable=g-import-not-at-top
    # Its read-ahead cache logs an INFO line for every file opened for reading: noise in the
    # tools' output (absl shows INFO records).
    logging.getLogger('fsspec.caching').setLevel(logging.WARNING)
    return fsspec.filesystem(protocol, use_listings_cache=False)
  except ImportError as e:
    client = _CLIENTS.get(protocol, f'the fsspec client of {protocol}://')
    install = CLOUD_INSTALL if client == 'gcsfs' else f'pip install {client}'
    raise MissingClientError(f'{path}: {protocol}:// paths need {client}: {install}') from e
  except ValueError as e:  # fsspec: "Protocol not known".
    raise ValueError(f'{path}: unknown storage protocol {protocol}:// ({e})') from e


def join(base: PathLike, *parts: str) -> str:
  """`base/part/...`, with `/` for URLs whatever the local separator."""
  base = os.fspath(base)
  return posixpath.join(base, *parts) if is_remote(base) else os.path.join(base, *parts)


def parent(path: PathLike) -> str:
  """The folder holding `path` (for a URL, its prefix up to the last `/`)."""
  path = os.fspath(path).rstrip('/')
  return posixpath.dirname(path) if is_remote(path) else os.path.dirname(path)


def absolute(path: PathLike) -> str:
  """A local path made absolute (`~` expanded); a URL unchanged."""
  path = os.fspath(path)
  return path if is_remote(path) else os.path.abspath(os.path.expanduser(_local(path)))


def orbax_path(path: PathLike) -> Any:
  """`path` as Orbax takes a checkpoint folder: an `epath.Path`, absolute when local."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  return epath.Path(absolute(path))


def exists(path: PathLike) -> bool:
  """Whether a file or folder (on object stores: an object or a prefix of one) is at `path`."""
  path = _local(path)
  return _filesystem(path).exists(path) if is_remote(path) else os.path.exists(path)


def isdir(path: PathLike) -> bool:
  """Whether `path` is a folder (on object stores: a bucket or a prefix of objects)."""
  path = _local(path)
  return _filesystem(path).isdir(path) if is_remote(path) else os.path.isdir(path)


def listdir(path: PathLike) -> list[str]:
  """The names (not paths) in folder `path`, sorted.

  Raises:
    FileNotFoundError: no folder at `path`.
  """
  path = _local(path)
  if not is_remote(path):
    return sorted(os.listdir(path))
  fs = _filesystem(path)
  if not fs.isdir(path):
    raise FileNotFoundError(f'No folder at {path}')
  # A zero-byte `folder/` object (consoles make them for "new folder") lists as the folder.
  itself = path.split('://', 1)[1].rstrip('/')
  return sorted(posixpath.basename(p.rstrip('/')) for p in fs.ls(path, detail=False)
                if p.rstrip('/') != itself)


def glob(pattern: PathLike) -> list[str]:
  """The paths matching `pattern` (`*`, `?`, and `**` for any depth, itself included), sorted,
  without trailing separators."""
  pattern = _local(pattern)
  if not is_remote(pattern):
    return sorted({p.rstrip(os.sep) or p for p in glob_lib.glob(pattern, recursive=True)})
  protocol = pattern.split('://', 1)[0]
  return sorted({f'{protocol}://{p.rstrip("/")}' for p in _filesystem(pattern).glob(pattern)})


def size(path: PathLike) -> int:
  """Bytes of the file at `path`, or of every file under folder `path`.

  Raises:
    FileNotFoundError: nothing at `path`.
  """
  path = _local(path)
  if is_remote(path):
    fs = _filesystem(path)
    if not fs.exists(path):
      raise FileNotFoundError(f'No file at {path}')
    return int(fs.du(path, total=True))
  if not os.path.isdir(path):
    return os.path.getsize(path)
  return sum(os.path.getsize(os.path.join(folder, name))
             for folder, _, names in os.walk(path) for name in names)


def makedirs(path: PathLike) -> None:
  """Creates local folder `path` with its parents; a no-op on object stores (no folders)."""
  path = _local(path)
  if not is_remote(path):
    os.makedirs(path, exist_ok=True)


def remove(path: PathLike) -> None:
  """Deletes the file (object) at `path`.

  Raises:
    FileNotFoundError: nothing at `path`.
  """
  path = _local(path)
  if is_remote(path):
    _filesystem(path).rm_file(path)
  else:
    os.remove(path)


@contextlib.contextmanager
def open_read(path: PathLike, mode: str = 'rb') -> Iterator[IO[Any]]:
  """The file at `path` open for reading (`'rb'` or `'r'`, UTF-8), seekable: `np.load` and
  `json.load` take it.

  Raises:
    FileNotFoundError: nothing at `path`.
  """
  if mode not in ('rb', 'r'):
    raise ValueError(f'open_read mode must be "rb" or "r", not {mode!r}')
  path = _local(path)
  text = {} if 'b' in mode else {'encoding': 'utf-8'}
  if not is_remote(path):
    with open(path, mode, **text) as f:
      yield f
    return
  fs = _filesystem(path)
  if not fs.isfile(path):
    raise FileNotFoundError(f'No file at {path}')
  with fs.open(path, mode, **text) as f:
    yield f


def read_bytes(path: PathLike) -> bytes:
  """The contents of the file at `path`."""
  with open_read(path, 'rb') as f:
    return f.read()


def read_text(path: PathLike) -> str:
  """The contents of the file at `path`, decoded as UTF-8."""
  with open_read(path, 'r') as f:
    return f.read()


@contextlib.contextmanager
def local_copy(path: PathLike) -> Iterator[str]:
  """A local filename holding the file (or folder) at `path`, for readers that need one
  (`safetensors.load_file`, `torch.load`).

  A local path is yielded as it is; a remote one is downloaded to a temporary folder, deleted
  at the end of the block.

  Raises:
    FileNotFoundError: nothing at `path`.
  """
  path = _local(path)
  if not is_remote(path):
    if not os.path.exists(path):
      raise FileNotFoundError(f'No file at {path}')
    yield path
    return
  fs = _filesystem(path)
  if not fs.exists(path):
    raise FileNotFoundError(f'No file at {path}')
  folder = tempfile.mkdtemp(prefix='vit_jax-')
  try:
    local = os.path.join(folder, posixpath.basename(path.rstrip('/')))
    if fs.isdir(path):
      fs.get(path.rstrip('/') + '/', local + '/', recursive=True)
    else:
      fs.get_file(path, local)
    yield local
  finally:
    shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def atomic_local_path(path: PathLike) -> Iterator[str]:
  """A local filename to write `path` through, for writers that need one (`np.savez`,
  `safetensors.save_file`, `torch.save`); `path` appears only when the block succeeds.

  The temporary name keeps the extension of `path` (`np.savez` appends `.npz` otherwise).
  Local: written beside `path` and renamed over it; remote: written to a local temporary
  folder and uploaded in one go (see the module docstring). On any error nothing appears at
  `path` and an older file there stays intact.
  """
  path = _local(path)
  if not is_remote(path):
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix='.tmp-', suffix=os.path.splitext(path)[1])
    os.close(fd)
    try:
      yield tmp
      os.replace(tmp, path)
    except BaseException:
      if os.path.exists(tmp):
        os.unlink(tmp)
      raise
    return
  fs = _filesystem(path)
  folder = tempfile.mkdtemp(prefix='vit_jax-')
  try:
    tmp = os.path.join(folder, posixpath.basename(path))
    yield tmp
    fs.put_file(tmp, path)
  finally:
    shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def open_write(path: PathLike, mode: str = 'wb') -> Iterator[IO[Any]]:
  """A file to write `path` through (`'wb'` or `'w'`, UTF-8); `path` appears, whole, only
  when the block succeeds (`atomic_local_path`)."""
  if mode not in ('wb', 'w'):
    raise ValueError(f'open_write mode must be "wb" or "w", not {mode!r}')
  with atomic_local_path(path) as tmp:
    with open(tmp, mode, encoding=None if 'b' in mode else 'utf-8') as f:
      yield f


def write_bytes(path: PathLike, data: bytes) -> None:
  """Writes `data` to `path`, atomically (`atomic_local_path`)."""
  with open_write(path, 'wb') as f:
    f.write(data)


def write_text(path: PathLike, text: str) -> None:
  """Writes `text` to `path` as UTF-8, atomically (`atomic_local_path`)."""
  with open_write(path, 'w') as f:
    f.write(text)


def probe_writable(folder: PathLike) -> None:
  """Writes, reads back and deletes a small file in `folder`, so that a job fails at its start,
  not at its first checkpoint, on a missing bucket, missing credentials or no permission.

  A local folder is created if missing; a bucket never is.

  Raises:
    StorageError: `folder` cannot be written, read or cleaned; the message names the path and
      the cause.
    MissingClientError: the client of the protocol is not installed.
  """
  folder = _local(folder)
  probe = join(folder, f'.vit_jax-write-probe-{uuid.uuid4().hex}')
  try:
    makedirs(folder)
    write_bytes(probe, b'vit_jax write probe')
    if read_bytes(probe) != b'vit_jax write probe':
      raise OSError('the probe file read back differs from what was written')
    remove(probe)
  except MissingClientError:
    raise
  except Exception as e:  # Every client has its own errors (HTTP, auth, OS).
    hint = ''
    if is_remote(folder):
      hint = (' (check that the bucket exists, that credentials are set, e.g. `gcloud auth '
              'application-default login` or a service account, and that they may create and '
              'delete objects there)')
    raise StorageError(f'Cannot use {folder} for writing: {type(e).__name__}: {e}{hint}') from e
