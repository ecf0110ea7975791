"""Swin weights: PyTorch state dicts (official Microsoft release, timm) <-> our parameters.

State dicts come in two layouts:

- official: `layers.{i}.downsample` closes stage i (i = 0 .. n-2), the classifier is `head`, and
  the buffers `relative_position_index` / `attn_mask` are stored;
- timm (current): `layers.{i}.downsample` opens stage i (i = 1 .. n-1), the classifier is
  `head.fc`, no buffers.

Both are read; buffers are always dropped (`model.py` recomputes them from static shapes).
`to_state_dict` writes timm's current layout, `to_official_state_dict` the official one. The
family record uses this map as its `timm` key map, so it reads any file whose keys it matches:
`.pth`, `.safetensors`, and an `.npz` of dotted torch names (`models.formats`). A Swin `.npz` of
`/`-keys is our parameter tree, which `checkpoint.load` reads. Nothing here imports torch.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import numpy as np

from vit_jax.checkpoint import tree
from vit_jax.checkpoint.errors import ConversionError

Params = dict[str, Any]
StateDict = dict[str, np.ndarray]

TABLE = 'relative_position_bias_table'
# timm's architecture names (a timm repo's `config.json` `architecture`) -> zoo names.
TIMM_NAMES = {
    'swin_tiny_patch4_window7_224': 'Swin-T', 'swin_small_patch4_window7_224': 'Swin-S',
    'swin_base_patch4_window7_224': 'Swin-B', 'swin_base_patch4_window12_384': 'Swin-B-384',
    'swin_large_patch4_window7_224': 'Swin-L', 'swin_large_patch4_window12_384': 'Swin-L-384',
}
BUFFERS = ('relative_position_index', 'attn_mask')
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


def has_bias_tables(keys: Sequence[str]) -> bool:
  """Whether state-dict keys or our flat parameter paths are a Swin Transformer's."""
  return any(key.endswith(TABLE) for key in keys)


def _is_official_layout(keys: Sequence[str]) -> bool:
  # Stage 0 never opens with a merge; only the official layout has a downsample numbered 0.
  return any(key.startswith('layers.0.downsample.') for key in keys)


def _convert_value(key: str, value: np.ndarray) -> tuple[str, np.ndarray]:
  """One state-dict entry -> (our flat path, array)."""
  parts = key.split('.')
  leaf, parent = parts[-1], parts[-2] if len(parts) > 1 else ''
  value = np.asarray(value, np.float32)
  if leaf == TABLE:
    if value.ndim != 2:
      raise ConversionError(f'Swin {key} must be (positions, heads), got shape {value.shape}')
    new_leaf = TABLE
  elif leaf == 'bias':
    new_leaf = 'bias'
  elif 'norm' in parent:
    new_leaf = 'scale'
  elif parent == 'proj' and parts[0] == 'patch_embed':
    if value.ndim != 4:
      raise ConversionError(f'Swin {key} must be a (out, in, kh, kw) conv, got {value.shape}')
    new_leaf, value = 'kernel', value.transpose(2, 3, 1, 0)
  else:
    if value.ndim != 2:
      raise ConversionError(f'Swin {key} must be a (out, in) Linear weight, got {value.shape}')
    new_leaf, value = 'kernel', value.T
  if leaf in ('bias', 'weight') and new_leaf != 'kernel' and value.ndim != 1:
    raise ConversionError(f'Swin {key} must be a vector, got shape {value.shape}')
  path = _INDEX_RE.sub(r'_\1', '.'.join(parts[:-1])).replace('.', '/')
  return f'{path}/{new_leaf}', value


def from_state_dict(state_dict: Mapping[str, Any]) -> Params:
  """Converts an official or timm Swin state dict (numpy arrays) to our nested parameters.

  Raises:
    ConversionError: naming every key that is not a Swin parameter or buffer, and any
      parameter with the wrong number of dimensions.
  """
  keys = [key for key in state_dict if not key.endswith(BUFFERS)]
  unknown = [key for key in keys if not any(r.match(key) for r in _KEY_RES)]
  if unknown:
    raise ConversionError(
        'Not a Swin state dict; unknown keys: ' + ', '.join(
            f'{key} {tuple(np.shape(state_dict[key]))}' for key in unknown))
  if not keys:
    raise ConversionError('The state dict holds no Swin parameters')
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
      raise ConversionError(f'Swin {key} maps to {path}, which another key already filled')
    flat[path] = value
  return tree.unflatten(flat)


def to_state_dict(params: Mapping[str, Any]) -> StateDict:
  """Our parameters -> a state dict in timm's current layout (float32 numpy, no buffers)."""
  state_dict = {}
  for path, value in tree.flatten(params).items():
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
      raise ConversionError(f'{path} is not a Swin parameter (would be saved as {key})')
    state_dict[key] = value
  return state_dict


def to_official_state_dict(params: Mapping[str, Any]) -> StateDict:
  """Our parameters -> the official Microsoft layout (merges close stages, `head`, no buffers)."""
  state_dict = {}
  for key, value in to_state_dict(params).items():
    key = _DOWNSAMPLE_RE.sub(lambda m: f'layers.{int(m.group(1)) - 1}.downsample.', key)
    state_dict[re.sub(r'^head\.fc\.', 'head.', key)] = value
  return state_dict
