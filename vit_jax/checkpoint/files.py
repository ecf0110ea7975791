"""Checkpoint files on any storage: the `.npz` reader and writer, one state-dict reader and writer.

Paths are local or object-store URLs (`gs://...`), read and written through `checkpoint.paths`.
Every file written here (`.npz`, big_vision `.npz`, `.safetensors`, `.pth`) goes through
`paths.atomic_local_path`, so a reader never sees a half-written file: locally a temporary file
beside the target is renamed over it; on an object store the object is uploaded in one go once
complete. Readers that need a local file name (`np.load`'s zip reader, safetensors, torch) get
one from `paths.local_copy` (a remote file is downloaded once). `.safetensors` files are read
and written through safetensors' NumPy API; torch is imported only for pickled
`.pth`/`.pt`/`.bin` files.
"""

from __future__ import annotations

import os
import posixpath
import zipfile
from typing import Any, Mapping

import numpy as np

from vit_jax.checkpoint import paths
from vit_jax.checkpoint.errors import CheckpointError
from vit_jax.checkpoint.errors import StateDictError

FlatParams = dict[str, np.ndarray]
TORCH_EXTENSIONS = ('.pth', '.pt', '.bin')
STATE_DICT_EXTENSIONS = ('.safetensors',) + TORCH_EXTENSIONS
# Training checkpoints nest the weights under one of these (the first found wins, so the live
# weights are preferred over an EMA copy stored beside them); DataParallel adds `module.`.
STATE_DICT_WRAPPERS = ('model', 'state_dict', 'model_state_dict', 'module', 'model_ema',
                       'state_dict_ema')
_DATA_PARALLEL_PREFIX = 'module.'


def _check_exists(path: str) -> None:
  if not paths.exists(path):
    raise FileNotFoundError(f'Checkpoint not found: {path}')


def extension(path: str | os.PathLike) -> str:
  """The lower-case extension of a file path or URL (`''` for a folder `.../`)."""
  return posixpath.splitext(os.fspath(path).rstrip('/'))[1].lower()


def read_npz(path: str | os.PathLike) -> FlatParams:
  """The arrays of an `.npz` file, by key.

  Raises:
    FileNotFoundError: no file at `path`.
    CheckpointError: the file is not a readable `.npz`, or holds no arrays.
  """
  path = os.fspath(path)
  _check_exists(path)
  try:
    with paths.local_copy(path) as local, np.load(local, allow_pickle=False) as data:
      flat = {key: data[key] for key in data.files}
  except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as e:
    raise CheckpointError(f'{path} is not a readable .npz checkpoint: {e}') from e
  if not flat:
    raise CheckpointError(f'{path} holds no arrays')
  return flat


def write_npz(flat: Mapping[str, np.ndarray], path: str | os.PathLike) -> None:
  """Writes flat arrays as an `.npz`, atomically (`paths.atomic_local_path`)."""
  with paths.open_write(path, 'wb') as f:
    np.savez(f, **flat)


def _tensor_to_numpy(tensor: Any) -> np.ndarray:
  import torch  # pylint: disable=g-import-not-at-top
  if tensor.dtype in (torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2):
    tensor = tensor.float()  # NumPy has no such dtypes; float32 holds them exactly.
  return tensor.detach().cpu().numpy()


def unwrap_state_dict(state: Any, source: str = 'the checkpoint') -> dict[str, Any]:
  """The tensors of a loaded torch checkpoint: wrappers (`STATE_DICT_WRAPPERS`) and
  DataParallel's `module.` prefix removed, non-tensor entries (epoch, config) dropped.

  Raises:
    StateDictError: no mapping of tensors inside.
  """
  while isinstance(state, Mapping):
    wrapper = next((w for w in STATE_DICT_WRAPPERS if isinstance(state.get(w), Mapping)), None)
    if wrapper is None:
      break
    state = state[wrapper]
  if not isinstance(state, Mapping):
    raise StateDictError(f'{source} holds a {type(state).__name__}, not a state dict')
  tensors = {(k[len(_DATA_PARALLEL_PREFIX):] if k.startswith(_DATA_PARALLEL_PREFIX) else k): v
             for k, v in state.items() if hasattr(v, 'shape')}
  if not tensors:
    raise StateDictError(f'{source} holds no tensors (top-level keys: '
                         f'{", ".join(map(str, list(state)[:10]))}); expected a state dict, '
                         f'possibly under one of {", ".join(STATE_DICT_WRAPPERS)}')
  return tensors


def read_state_dict(path: str | os.PathLike) -> FlatParams:
  """A torch state dict (`.safetensors`, `.pth`/`.pt`/`.bin`) as NumPy arrays.

  Training checkpoints that nest the weights are unwrapped (see `unwrap_state_dict`); bfloat16
  and float8 tensors become float32. `.npz` files are parameter trees: `checkpoint.load` reads
  them.

  Raises:
    FileNotFoundError: nothing at `path`.
    StateDictError: not a readable state dict, or a `.pth` file without torch installed.
  """
  path = os.fspath(path)
  _check_exists(path)
  ext = extension(path)
  if ext not in STATE_DICT_EXTENSIONS:
    raise StateDictError(f'Unknown state-dict extension {ext!r} of {path}; expected '
                         f'{", ".join(STATE_DICT_EXTENSIONS)} (.npz files: checkpoint.load)')
  if ext == '.safetensors':
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    try:
      with paths.local_copy(path) as local:
        return dict(load_file(local))
    except Exception as e:  # safetensors raises its own SafetensorError for bad headers.
      raise StateDictError(f'{path} is not a readable .safetensors state dict: {e}') from e
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise StateDictError(f'Reading {path} needs torch; convert from .safetensors to avoid '
                         'it') from e
  try:
    with paths.local_copy(path) as local:
      state = torch.load(local, map_location='cpu', weights_only=True)
  except Exception as e:  # Pickle and zip errors of every kind.
    raise StateDictError(f'{path} is not a readable torch state dict: {e}') from e
  return {k: _tensor_to_numpy(v) for k, v in unwrap_state_dict(state, path).items()}


def write_state_dict(state: Mapping[str, np.ndarray], path: str | os.PathLike) -> None:
  """Writes a state dict as `.safetensors` (no torch needed) or `.pth`/`.pt`/`.bin`, atomically."""
  path = os.fspath(path)
  ext = extension(path)
  if ext not in STATE_DICT_EXTENSIONS:
    raise StateDictError(f'Cannot write a state dict as {ext!r} ({path}); expected '
                         f'{", ".join(STATE_DICT_EXTENSIONS)}')
  state = {k: np.ascontiguousarray(v) for k, v in state.items()}
  if ext == '.safetensors':
    from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
    with paths.atomic_local_path(path) as tmp:
      save_file(state, tmp, metadata={'format': 'pt'})  # transformers requires the 'pt' tag.
    return
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise StateDictError(f'Writing {path} needs torch; write .safetensors instead') from e
  with paths.atomic_local_path(path) as tmp:
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, tmp)
