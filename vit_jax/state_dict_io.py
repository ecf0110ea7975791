"""Torch state dicts on disk (`.safetensors`, `.pth`/`.pt`/`.bin`) as dicts of NumPy arrays.

`.safetensors` files are read and written through safetensors' NumPy API, without torch; torch
is imported only for pickled `.pth` files.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

FlatParams = dict[str, np.ndarray]
TORCH_EXTENSIONS = ('.pth', '.pt', '.bin')


class StateDictError(ValueError):
  """A file that is not a readable state dict, or one that cannot be written."""


def _to_numpy(tensor: Any) -> np.ndarray:
  import torch  # pylint: disable=g-import-not-at-top
  if tensor.dtype in (torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2):
    tensor = tensor.float()  # NumPy has no such dtypes; float32 holds them exactly.
  return tensor.detach().cpu().numpy()


def read_state_dict(path: str | os.PathLike) -> FlatParams:
  """A torch state dict (`.safetensors`, `.pth`/`.pt`/`.bin`) as NumPy arrays.

  Training checkpoints that nest the weights (`{'model': ...}`, `{'state_dict': ...}`) and
  DataParallel's `module.` prefix are unwrapped; bfloat16 and float8 tensors become float32.

  Raises:
    FileNotFoundError: nothing at `path`.
    StateDictError: not a readable state dict, or a `.pth` file without torch installed.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f'Checkpoint not found: {path}')
  if path.endswith('.safetensors'):
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    try:
      return dict(load_file(path))
    except Exception as e:  # safetensors raises its own SafetensorError for bad headers.
      raise StateDictError(f'{path} is not a readable .safetensors file: {e}') from e
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise StateDictError(f'Reading {path} needs torch; convert from .safetensors to avoid '
                         'it') from e
  try:
    state = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # Pickle and zip errors of every kind.
    raise StateDictError(f'{path} is not a readable torch checkpoint: {e}') from e
  for wrapper in ('model', 'state_dict', 'model_state_dict'):
    if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
      state = state[wrapper]
  if not isinstance(state, Mapping):
    raise StateDictError(f'{path} holds a {type(state).__name__}, not a state dict')
  state = {(k[len('module.'):] if k.startswith('module.') else k): v for k, v in state.items()}
  return {k: _to_numpy(v) for k, v in state.items() if hasattr(v, 'detach')}


def write_state_dict(state: Mapping[str, np.ndarray], path: str | os.PathLike) -> None:
  """Writes a state dict as `.safetensors` (no torch needed) or `.pth`/`.pt`/`.bin`."""
  path = os.fspath(path)
  state = {k: np.ascontiguousarray(v) for k, v in state.items()}
  if path.endswith('.safetensors'):
    from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
    save_file(state, path, metadata={'format': 'pt'})  # transformers requires the 'pt' tag.
    return
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise StateDictError(f'Writing {path} needs torch; write .safetensors instead') from e
  torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)
