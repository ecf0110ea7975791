"""Swin weights: PyTorch state dicts (official Microsoft release, timm) <-> our parameters.

Reads `.pth` (torch is imported only then), `.safetensors` (numpy API, no torch) and `.npz`
files holding a state dict, in either layout:

- official: `layers.{i}.downsample` closes stage i (i = 0 .. n-2), the classifier is `head`, and
  the buffers `relative_position_index` / `attn_mask` are stored;
- timm (current): `layers.{i}.downsample` opens stage i (i = 1 .. n-1), the classifier is
  `head.fc`, no buffers.

Buffers are always dropped: `models_swin` recomputes them from static shapes. `save` writes timm's
current layout. `load_pretrained` prepares a checkpoint for fine-tuning at another resolution or
window size (relative position bias tables resized, head re-initialised when classes change).
"""

from __future__ import annotations

import math
import os
import re
import zipfile
from typing import Any, Mapping, Sequence

from absl import logging
import numpy as np

from vit_jax import checkpoint

Params = dict[str, Any]
StateDict = dict[str, np.ndarray]
Window = tuple[int, int]

_TABLE = 'relative_position_bias_table'
_BUFFERS = ('relative_position_index', 'attn_mask')
# Every parameter key of a Swin state dict (either layout), after dropping buffers.
_KEY_RES = tuple(re.compile(pattern) for pattern in (
    r'^patch_embed\.(proj|norm)\.(weight|bias)$',
    r'^layers\.\d+\.blocks\.\d+\.(norm1|norm2)\.(weight|bias)$',
    r'^layers\.\d+\.blocks\.\d+\.attn\.(qkv|proj)\.(weight|bias)$',
    r'^layers\.\d+\.blocks\.\d+\.attn\.relative_position_bias_table$',
    r'^layers\.\d+\.blocks\.\d+\.mlp\.(fc1|fc2)\.(weight|bias)$',
    r'^layers\.\d+\.downsample\.(norm\.weight|norm\.bias|reduction\.weight)$',
    r'^norm\.(weight|bias)$',
    r'^head(\.fc)?\.(weight|bias)$',
))
_DOWNSAMPLE_RE = re.compile(r'^layers\.(\d+)\.downsample\.')
_INDEX_RE = re.compile(r'\.(\d+)(?=\.|$)')
_STAGE_RE = re.compile(r'^layers_(\d+)/')


class SwinCheckpointError(checkpoint.CheckpointError):
  """A Swin state dict that cannot be read or converted."""


# ---------------------------------------------------------------------------------------------
# Files.


def read_state_dict(path: str | os.PathLike) -> StateDict:
  """Reads a state dict from `.pth`/`.pt`/`.bin`, `.safetensors` or `.npz` into numpy arrays.

  `.pth` files may wrap the state dict as `{'model': ...}` (official release) or
  `{'state_dict': ...}`; both are unwrapped. torch is imported only for these files.

  Raises:
    FileNotFoundError: no file at `path`.
    SwinCheckpointError: unknown extension or unreadable file.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f'Checkpoint not found: {path}')
  ext = os.path.splitext(path)[1].lower()
  try:
    if ext in ('.pth', '.pt', '.bin'):
      import torch  # pylint: disable=g-import-not-at-top
      data = torch.load(path, map_location='cpu', weights_only=True)
      for wrapper in ('model', 'state_dict'):
        if isinstance(data, Mapping) and isinstance(data.get(wrapper), Mapping):
          data = data[wrapper]
      return {key: value.detach().float().numpy() if value.is_floating_point()
              else value.numpy() for key, value in data.items()}
    if ext == '.safetensors':
      import safetensors  # pylint: disable=g-import-not-at-top
      from safetensors import numpy as safetensors_numpy  # pylint: disable=g-import-not-at-top
      try:
        return dict(safetensors_numpy.load_file(path))
      except safetensors.SafetensorError as e:
        raise SwinCheckpointError(f'{path} is not a readable {ext} state dict: {e}') from e
    if ext == '.npz':
      with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}
  except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError, RuntimeError) as e:
    raise SwinCheckpointError(f'{path} is not a readable {ext} state dict: {e}') from e
  raise SwinCheckpointError(f'Unknown checkpoint extension {ext!r} of {path}; expected .pth, '
                            '.safetensors or .npz')


def load(path: str | os.PathLike) -> Params:
  """Reads a Swin checkpoint and returns our (nested numpy) parameters.

  Reads the official and timm state dicts, and our own `.npz` (flattened '/'-joined parameter
  names, as a training run exports them with `checkpoint.save`).
  """
  state_dict = read_state_dict(path)
  if state_dict and all('/' in key and '.' not in key for key in state_dict):
    return checkpoint.unflatten(state_dict)
  return from_state_dict(state_dict)


def save(params: Mapping[str, Any], path: str | os.PathLike) -> None:
  """Writes `params` as a timm-layout state dict: `.safetensors` or `.npz` by extension.

  The file appears atomically (written under a temporary name, then renamed).
  """
  path = os.fspath(path)
  ext = os.path.splitext(path)[1].lower()
  if ext not in ('.safetensors', '.npz'):
    raise ValueError(f'Can save Swin weights as .safetensors or .npz, not {ext!r} ({path})')
  state_dict = {key: np.ascontiguousarray(value) for key, value in to_state_dict(params).items()}
  with checkpoint.atomic_path(path) as tmp:
    if ext == '.safetensors':
      from safetensors import numpy as safetensors_numpy  # pylint: disable=g-import-not-at-top
      safetensors_numpy.save_file(state_dict, tmp)
    else:
      with open(tmp, 'wb') as f:
        np.savez(f, **state_dict)


# ---------------------------------------------------------------------------------------------
# State dict <-> parameters.


def _is_official_layout(keys: Sequence[str]) -> bool:
  # Stage 0 never opens with a merge; only the official layout has a downsample numbered 0.
  return any(key.startswith('layers.0.downsample.') for key in keys)


def _convert_value(key: str, value: np.ndarray) -> tuple[str, np.ndarray]:
  """One state-dict entry -> (our flat path, array)."""
  parts = key.split('.')
  leaf, parent = parts[-1], parts[-2] if len(parts) > 1 else ''
  value = np.asarray(value, np.float32)
  if leaf == _TABLE:
    if value.ndim != 2:
      raise SwinCheckpointError(f'{key} must be (positions, heads), got shape {value.shape}')
    new_leaf = _TABLE
  elif leaf == 'bias':
    new_leaf = 'bias'
  elif 'norm' in parent:
    new_leaf = 'scale'
  elif parent == 'proj' and parts[0] == 'patch_embed':
    if value.ndim != 4:
      raise SwinCheckpointError(f'{key} must be a (out, in, kh, kw) conv, got {value.shape}')
    new_leaf, value = 'kernel', value.transpose(2, 3, 1, 0)
  else:
    if value.ndim != 2:
      raise SwinCheckpointError(f'{key} must be a (out, in) Linear weight, got {value.shape}')
    new_leaf, value = 'kernel', value.T
  if leaf in ('bias', 'weight') and new_leaf != 'kernel' and value.ndim != 1:
    raise SwinCheckpointError(f'{key} must be a vector, got shape {value.shape}')
  path = _INDEX_RE.sub(r'_\1', '.'.join(parts[:-1])).replace('.', '/')
  return f'{path}/{new_leaf}', value


def from_state_dict(state_dict: Mapping[str, Any]) -> Params:
  """Converts an official or timm Swin state dict (numpy arrays) to our nested parameters.

  Raises:
    SwinCheckpointError: naming every key that is not a Swin parameter or buffer, and any
      parameter with the wrong number of dimensions.
  """
  keys = [key for key in state_dict if not key.endswith(_BUFFERS)]
  unknown = [key for key in keys if not any(r.match(key) for r in _KEY_RES)]
  if unknown:
    raise SwinCheckpointError(
        'Not a Swin state dict; unknown keys: ' + ', '.join(
            f'{key} {tuple(np.shape(state_dict[key]))}' for key in unknown))
  if not keys:
    raise SwinCheckpointError('The state dict holds no Swin parameters')
  official = _is_official_layout(keys)
  flat = {}
  for key in keys:
    name = key
    if official:
      # The merge that closes stage i is the one that opens stage i + 1 in our layout.
      name = _DOWNSAMPLE_RE.sub(lambda m: f'layers.{int(m.group(1)) + 1}.downsample.', name)
    name = re.sub(r'^head\.fc\.', 'head.', name)
    path, value = _convert_value(name, np.asarray(state_dict[key]))
    if path in flat:
      raise SwinCheckpointError(f'{key} maps to {path}, which another key already filled')
    flat[path] = value
  return checkpoint.unflatten(flat)


def to_state_dict(params: Mapping[str, Any]) -> StateDict:
  """Our parameters -> a state dict in timm's current layout (float32 numpy, no buffers)."""
  state_dict = {}
  for path, value in checkpoint.flatten(params).items():
    value = np.asarray(value, np.float32)
    *parents, leaf = path.split('/')
    if leaf == 'kernel':
      value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
      leaf = 'weight'
    elif leaf == 'scale':
      leaf = 'weight'
    key = re.sub(r'_(\d+)(?=\.|$)', r'.\1', '.'.join(parents + [leaf]))
    if key.startswith('head.'):
      key = 'head.fc.' + key[len('head.'):]
    if not any(r.match(key) for r in _KEY_RES):
      raise SwinCheckpointError(f'{path} is not a Swin parameter (would be saved as {key})')
    state_dict[key] = value
  return state_dict


def to_official_state_dict(params: Mapping[str, Any]) -> StateDict:
  """Our parameters -> the official Microsoft layout (merges close stages, `head`, no buffers)."""
  state_dict = {}
  for key, value in to_state_dict(params).items():
    key = _DOWNSAMPLE_RE.sub(lambda m: f'layers.{int(m.group(1)) - 1}.downsample.', key)
    state_dict[re.sub(r'^head\.fc\.', 'head.', key)] = value
  return state_dict


# ---------------------------------------------------------------------------------------------
# Relative position bias tables at a new window size.


def _cubic_weights(t: np.ndarray, a: float) -> np.ndarray:
  """Keys cubic convolution weights for the taps at offsets -1, 0, 1, 2 from floor(x)."""
  def near(d):  # |d| <= 1
    return ((a + 2) * d - (a + 3)) * d * d + 1

  def far(d):  # 1 < |d| < 2
    return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

  return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def _bicubic_matrix(size_in: int, size_out: int, a: float = -0.75) -> np.ndarray:
  """(size_out, size_in) matrix of 1-D bicubic resampling as in torch's F.interpolate.

  align_corners=False: output pixel centres map to `(i + 0.5) * in / out - 0.5`, which may be
  negative (torch does not clamp it for cubic); taps outside the input repeat the edge pixel.
  torch uses Keys' a = -0.75 (jax.image.resize uses -0.5 and renormalises at the edges instead
  of repeating them, so it does not match).
  """
  src = (np.arange(size_out, dtype=np.float64) + 0.5) * (size_in / size_out) - 0.5
  base = np.floor(src)
  weights = _cubic_weights(src - base, a)
  taps = np.clip(base[:, None].astype(np.int64) + np.arange(-1, 3)[None, :], 0, size_in - 1)
  matrix = np.zeros((size_out, size_in))
  np.add.at(matrix, (np.repeat(np.arange(size_out), 4), taps.reshape(-1)), weights.reshape(-1))
  return matrix


def bicubic_resize(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Resizes (..., H, W) like torch `F.interpolate(mode='bicubic', align_corners=False)`."""
  images = np.asarray(images)
  rows = _bicubic_matrix(images.shape[-2], size[0])
  cols = _bicubic_matrix(images.shape[-1], size[1])
  out = np.einsum('oh,...hw,pw->...op', rows, images.astype(np.float64), cols)
  return out.astype(images.dtype)


def _geometric_positions(src: int, dst: int) -> np.ndarray:
  """BEiT/timm: where the `src` stored offsets sit when stretched over `dst` offsets.

  The offsets from the centre grow geometrically with a ratio q found by bisection, so the table
  keeps its resolution near offset 0 (where attention is sharpest) and stretches at the edges.
  """
  half_src, half_dst = src // 2, dst // 2
  left, right = 1.01, 1.5
  while right - left > 1e-6:
    q = (left + right) / 2
    if (1 - q**half_src) / (1 - q) > half_dst:
      right = q
    else:
      left = q
  dis = np.cumsum([0.] + [q**(i + 1) for i in range(half_src - 1)]) + 1
  return np.concatenate([-dis[::-1], [0.], dis])


def geometric_resize(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Resizes (..., H, W) as timm's `resize_rel_pos_bias_table` does (without scipy).

  The stored grid is placed at geometrically spaced positions and read back by bilinear
  interpolation at the integer offsets of the new grid, clamping beyond the outermost position.
  """
  images = np.asarray(images, np.float64)

  def resample(x, axis, src, dst):
    positions = _geometric_positions(src, dst)
    targets = np.arange(dst) - dst // 2
    return np.apply_along_axis(lambda v: np.interp(targets, positions, v), axis, x)

  (h, w), (new_h, new_w) = images.shape[-2:], size
  out = resample(images, -2, h, new_h) if h != new_h else images
  out = resample(out, -1, w, new_w) if w != new_w else out
  return out.astype(np.float32)


def resize_relative_position_bias_table(table: np.ndarray, new_window: int | Sequence[int], *,
                                        old_window: int | Sequence[int] | None = None,
                                        method: str = 'bicubic') -> np.ndarray:
  """Resizes a ((2wh-1)(2ww-1), heads) table to another window size.

  Args:
    table: the stored table.
    new_window: the target window, int or (h, w).
    old_window: the stored table's window; inferred as square when None.
    method: 'bicubic' (the official loader: each head's table as a (S, S) image, torch bicubic,
      align_corners=False) or 'geometric' (timm's BEiT-style resize).

  Returns:
    The resized table, float32.
  """
  table = np.asarray(table)
  if table.ndim != 2:
    raise ValueError(f'Relative position bias table must be (positions, heads), got {table.shape}')
  positions, heads = table.shape
  new_h, new_w = (new_window, new_window) if isinstance(new_window, int) else new_window
  if old_window is None:
    side = math.isqrt(positions)
    if side * side != positions or side % 2 == 0:
      raise ValueError(f'A table of {positions} positions is not of a square window; pass '
                       'old_window')
    src = (side, side)
  else:
    old_h, old_w = (old_window, old_window) if isinstance(old_window, int) else old_window
    src = (2 * old_h - 1, 2 * old_w - 1)
    if src[0] * src[1] != positions:
      raise ValueError(f'old_window {old_window} needs {src[0] * src[1]} positions, the table '
                       f'has {positions}')
  dst = (2 * new_h - 1, 2 * new_w - 1)
  if src == dst:
    return table.astype(np.float32)
  images = table.T.reshape(heads, *src)
  if method == 'bicubic':
    images = bicubic_resize(images.astype(np.float32), dst)
  elif method == 'geometric':
    images = geometric_resize(images, dst)
  else:
    raise ValueError(f"Unknown resize method {method!r}; expected 'bicubic' or 'geometric'")
  return images.reshape(heads, -1).T.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Fine-tuning.


def load_pretrained(pretrained: str | os.PathLike | Mapping[str, Any],
                    init_params: Mapping[str, Any], *, method: str = 'bicubic',
                    reset_head: bool | None = None,
                    windows: Sequence[int | Sequence[int]] | None = None,
                    old_windows: Sequence[int | Sequence[int]] | None = None) -> Params:
  """Loads pre-trained Swin weights into a fresh model that may differ in resolution or window.

  Relative position bias tables whose shape differs from the model's are resized (official:
  bicubic; timm: geometric); indices and masks need nothing, the model recomputes them. The head
  is re-initialised with zeros, as the official loader does, when its shape differs (another
  number of classes), and dropped when the model has none. Everything else must fit: missing,
  extra or mis-shaped keys raise a CheckpointError naming them.

  Args:
    pretrained: a checkpoint path (any format `read_state_dict` reads), a state dict of numpy
      arrays (either layout), or our parameters.
    init_params: the target model's initial parameters (shapes, dtypes, head).
    method: table resize, 'bicubic' or 'geometric'.
    reset_head: True always re-initialises the head, False always keeps the checkpoint's, None
      re-initialises it only when its shape differs.
    windows: the target model's effective window per stage (see `models_swin.stage_windows`);
      needed only for non-square windows, else inferred from the table shapes.
    old_windows: the checkpoint's window per stage, likewise.

  Returns:
    Nested parameters with the structure and dtypes of `init_params`.
  """
  if isinstance(pretrained, (str, os.PathLike)):
    params = load(pretrained)
  elif any('.' in key for key in pretrained):
    params = from_state_dict(pretrained)
  else:
    params = pretrained
  flat = {key: np.asarray(value) for key, value in checkpoint.flatten(params).items()}
  # Only shapes and dtypes of the target matter, so `jax.eval_shape` output works too; broadcast
  # zero-strided views stand in for it without allocating.
  flat_init = {key: np.broadcast_to(np.zeros((), value.dtype), value.shape)
               for key, value in checkpoint.flatten(init_params).items()}

  head = {key for key in set(flat) | set(flat_init) if key.split('/')[0] == 'head'}
  head_differs = any(key not in flat or key not in flat_init
                     or np.shape(flat[key]) != np.shape(flat_init[key]) for key in head)
  if reset_head or (reset_head is None and head_differs):
    for key in head:
      flat.pop(key, None)
      if key in flat_init:
        flat[key] = np.zeros(np.shape(flat_init[key]), np.float32)
    logging.info('Re-initialised the head (zeros)')

  for key, target in flat_init.items():
    if not key.endswith(_TABLE) or key not in flat or np.shape(flat[key]) == np.shape(target):
      continue
    stage = int(_STAGE_RE.match(key).group(1)) if _STAGE_RE.match(key) else None
    old = old_windows[stage] if old_windows is not None and stage is not None else None
    new = windows[stage] if windows is not None and stage is not None else None
    if new is None:
      side = math.isqrt(np.shape(target)[0])
      if side * side != np.shape(target)[0]:
        raise SwinCheckpointError(f'{key}: the model window is not square; pass windows')
      new = (side + 1) // 2
    if np.shape(flat[key])[1] != np.shape(target)[1]:
      raise SwinCheckpointError(f'{key}: checkpoint has {np.shape(flat[key])[1]} heads, the '
                                f'model {np.shape(target)[1]}')
    logging.info('Resizing %s %s -> %s (%s)', key, np.shape(flat[key]), np.shape(target), method)
    flat[key] = resize_relative_position_bias_table(flat[key], new, old_window=old,
                                                    method=method)
  return checkpoint.inspect_params(params=checkpoint.unflatten(flat),
                                   expected=checkpoint.unflatten(flat_init))
