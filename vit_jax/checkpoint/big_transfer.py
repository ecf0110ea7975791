"""big_transfer `.npz` files: TF-style names under `resnet/` <-> our ResNetV2 parameter paths.

The layout of the files Google's `big_transfer` code wrote (the BiT releases), named after that
code as `big_vision` is after its own: an `.npz` key layout that `checkpoint.load` reads like the
others, with no model code. GroupNorm is `gamma`/`beta`, the head a 1x1 conv, units zero-padded
(`unit01`). Norm and conv of one letter (a, b, c) are our gn{i} and conv{i}; `a/proj` is the
projection shortcut. Some files number their convs `standardized_conv2d_N` (Keras layer naming),
which means the same thing.
"""

from __future__ import annotations

import re
from typing import Mapping

import numpy as np

from vit_jax.checkpoint.errors import CheckpointError
from vit_jax.checkpoint.layout import Layout

FlatParams = dict[str, np.ndarray]

_PREFIX = 'resnet/'
_CONV_N_RE = re.compile(r'(^|/)standardized_conv2d_\d+/')
_FIXED = {
    'root_block/standardized_conv2d/kernel': 'conv_root/kernel',
    'group_norm/gamma': 'gn_pre_head/scale',
    'group_norm/beta': 'gn_pre_head/bias',
    'head/conv2d/kernel': 'head/kernel',
    'head/conv2d/bias': 'head/bias',
}
# Inside a unit: our `gn{i}` and `conv{i}` are the norm and conv of letter a, b, c.
_UNIT_LEAVES = {'conv_proj/kernel': 'a/proj/standardized_conv2d/kernel'}
for _i, _letter in enumerate('abc', 1):
  _UNIT_LEAVES.update({f'conv{_i}/kernel': f'{_letter}/standardized_conv2d/kernel',
                       f'gn{_i}/scale': f'{_letter}/group_norm/gamma',
                       f'gn{_i}/bias': f'{_letter}/group_norm/beta'})
_UNIT_RE = re.compile(r'^block(\d+)/unit(\d+)/(.+)$')


def _rename(name: str, fixed: Mapping[str, str], unit_leaves: Mapping[str, str]) -> str | None:
  """Renames one key between the layouts (in the direction of the two tables), or None."""
  if name in fixed:
    return fixed[name]
  match = _UNIT_RE.match(name)
  if not match or match.group(3) not in unit_leaves:
    return None
  block, unit, leaf = match.groups()
  return f'block{int(block)}/unit{int(unit):02d}/{unit_leaves[leaf]}'


def _path(key: str) -> str:
  """A big_transfer file key -> our parameter path."""
  path = None
  if key.startswith(_PREFIX):
    name = _CONV_N_RE.sub(r'\1standardized_conv2d/', key[len(_PREFIX):])
    path = _rename(name, _FIXED, {v: k for k, v in _UNIT_LEAVES.items()})
  if path is None:
    raise CheckpointError(f'Unrecognised key in a big_transfer (BiT) checkpoint: {key}')
  return path


def _key(path: str) -> str:
  """Our parameter path -> the big_transfer file key."""
  name = _rename(path, {v: k for k, v in _FIXED.items()}, _UNIT_LEAVES)
  if name is None:
    raise CheckpointError(
        f'Parameter {path} has no place in the big_transfer (BiT) checkpoint layout')
  return _PREFIX + name


def to_params(flat: FlatParams) -> FlatParams:
  """big_transfer file keys -> our flat ResNetV2 parameters."""
  out, sources = {}, {}
  for key, value in flat.items():
    path = _path(key)
    if path in out:
      raise CheckpointError(
          f'big_transfer checkpoint keys {sources[path]} and {key} both hold {path}')
    value = np.asarray(value)
    if path == 'head/kernel':
      value = value.reshape(value.shape[-2:])  # 1x1 conv (1, 1, C, n) -> Dense (C, n).
    elif path.endswith(('/scale', '/bias')) and path != 'head/bias':
      value = value.reshape(-1)  # GroupNorm parameters, sometimes stored as (1, 1, 1, C).
    out[path], sources[path] = value, key
  return out


def from_params(flat: FlatParams) -> FlatParams:
  """Our flat ResNetV2 parameters -> big_transfer file keys."""
  out = {}
  for path, value in flat.items():
    if path == 'head/kernel':
      value = np.asarray(value)[None, None]
    out[_key(path)] = value
  return out


LAYOUT = Layout(
    name='big_transfer',
    matches_checkpoint=lambda keys: any(key.startswith(_PREFIX) for key in keys),
    matches_params=lambda keys: any(key.startswith('gn_pre_head/') for key in keys),
    to_params=to_params,
    from_params=from_params,
)
