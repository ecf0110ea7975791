"""Parameter trees: nested dicts <-> flat `/`-joined keys, and scanned encoders <-> per-block.

Checkpoint files hold flat keys and one key per encoder block; scanned models (`nn.scan`) keep
the blocks stacked on a leading axis. These helpers move between the forms.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import numpy as np

from vit_jax.checkpoint.errors import CheckpointError

Params = dict[str, Any]
FlatParams = dict[str, np.ndarray]

SCANNED_BLOCK = 'encoderblock'
_BLOCK_RE = re.compile(r'^encoderblock_(\d+)$')
# dtypes plain numpy (and timm) cannot load from a file; stored as float32, which holds them.
_WIDENED_DTYPES = ('bfloat16', 'float8_e4m3fn', 'float8_e5m2')


def flatten(tree: Mapping[str, Any], sep: str = '/') -> FlatParams:
  """{'a': {'b': x}} -> {'a/b': x}; accepts dicts and FrozenDicts."""
  flat = {}

  def visit(node, prefix):
    if isinstance(node, Mapping):
      for key, value in node.items():
        visit(value, f'{prefix}{sep}{key}' if prefix else str(key))
    else:
      flat[prefix] = node

  visit(tree, '')
  return flat


def unflatten(flat: Mapping[str, Any], sep: str = '/') -> Params:
  """{'a/b': x} -> {'a': {'b': x}}."""
  tree: Params = {}
  for key, value in flat.items():
    node = tree
    *parents, leaf = key.split(sep)
    for part in parents:
      node = node.setdefault(part, {})
      if not isinstance(node, dict):
        raise CheckpointError(f'Key {key!r} nests under a leaf')
    node[leaf] = value
  return tree


def leaf_shape(flat: Mapping[str, Any], key: str, kind: str) -> tuple[int, ...]:
  """The shape of `flat[key]`; CheckpointError saying the parameters are not a `kind` otherwise."""
  if key not in flat:
    raise CheckpointError(f'Not a {kind} checkpoint: it has no {key!r}')
  return tuple(np.shape(flat[key]))


def to_numpy(value: Any) -> np.ndarray:
  """A host array that any numpy reads back: bfloat16 and float8 widened to float32."""
  array = np.asarray(value)
  if array.dtype.kind == 'V' or array.dtype.name in _WIDENED_DTYPES:
    array = array.astype(np.float32)
  return array


def unstack_encoder(flat: FlatParams) -> FlatParams:
  """`.../encoderblock/X` of shape (L, ...) -> `.../encoderblock_{i}/X`."""
  out = {}
  for key, value in flat.items():
    path = key.split('/')
    if SCANNED_BLOCK in path:
      at = path.index(SCANNED_BLOCK)
      for i in range(value.shape[0]):
        out['/'.join(path[:at] + [f'{SCANNED_BLOCK}_{i}'] + path[at + 1:])] = value[i]
    else:
      out[key] = value
  return out


def stack_encoder(flat: FlatParams) -> FlatParams:
  """`.../encoderblock_{i}/X` -> `.../encoderblock/X` stacked on a leading axis."""
  groups: dict[str, dict[int, Any]] = {}
  out = {}
  for key, value in flat.items():
    path = key.split('/')
    at = next((j for j, part in enumerate(path) if _BLOCK_RE.match(part)), None)
    if at is None:
      out[key] = value
      continue
    index = int(_BLOCK_RE.match(path[at]).group(1))
    stacked_key = '/'.join(path[:at] + [SCANNED_BLOCK] + path[at + 1:])
    groups.setdefault(stacked_key, {})[index] = value
  for key, by_index in groups.items():
    if sorted(by_index) != list(range(len(by_index))):
      raise CheckpointError(f'Cannot stack {key!r}: block indices {sorted(by_index)} have gaps')
    out[key] = np.stack([np.asarray(by_index[i]) for i in range(len(by_index))])
  return out


def is_scanned(flat_keys: Sequence[str]) -> bool:
  """Whether flat parameter paths are of a scanned encoder (blocks stacked)."""
  return any(SCANNED_BLOCK in key.split('/') for key in flat_keys)
