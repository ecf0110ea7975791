"""Reading and writing the released `.npz` checkpoints, and preparing them for fine-tuning.

Names mirror the original library (`load`, `save`, `load_pretrained`, `inspect_params`,
`interpolate_posembed`) so research code written against it keeps working. A checkpoint is one
`np.savez` file of flat `/`-joined keys; each *layout* (ViT and hybrid, BiT, ...) maps those keys
to our parameter paths and back. Imports neither TensorFlow nor torch.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import tempfile
import zipfile
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Sequence

from absl import logging
import numpy as np
import scipy.ndimage

Params = dict[str, Any]
FlatParams = dict[str, np.ndarray]

_OPT_PREFIX = 'opt/target/'
# Hybrid checkpoints written by early flax store GroupNorm scale/bias as (1, 1, 1, C).
_GROUPNORM_RE = re.compile(r'gn(\d+|_root|_proj)$')
_SCANNED_BLOCK = 'encoderblock'
# Classifier heads, re-initialised for fine-tuning ('head_dist': DeiT's distillation head).
_HEADS = ('head', 'head_dist')
_BLOCK_RE = re.compile(r'^encoderblock_(\d+)$')


class CheckpointError(ValueError):
  """A checkpoint that cannot be read, or does not fit the model it is loaded into."""


# ---------------------------------------------------------------------------------------------
# Flat <-> nested trees.


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


# ---------------------------------------------------------------------------------------------
# Layouts: checkpoint keys <-> our parameter paths.


class Layout(NamedTuple):
  """How one family's checkpoint keys map to our flat parameter paths."""
  name: str
  matches_checkpoint: Callable[[Sequence[str]], bool]  # on the file's keys
  matches_params: Callable[[Sequence[str]], bool]  # on our flat parameter paths
  to_params: Callable[[FlatParams], FlatParams]
  from_params: Callable[[FlatParams], FlatParams]


def _vit_to_params(flat: FlatParams) -> FlatParams:
  out = {}
  for key, value in flat.items():
    path = key.split('/')
    if len(path) > 1 and _GROUPNORM_RE.match(path[-2]) and path[-1] in ('scale', 'bias'):
      value = value.reshape(-1)
    out[key] = value
  return out


# The original ViT and hybrid files use our names verbatim (our modules are named after them).
VIT_LAYOUT = Layout(
    name='vit',
    matches_checkpoint=lambda keys: True,
    matches_params=lambda keys: True,
    to_params=_vit_to_params,
    from_params=dict,
)

# BiT (big_transfer) files: TF-style names under `resnet/`, GroupNorm `gamma`/`beta`, the head a
# 1x1 conv, units zero-padded (`unit01`). Norm and conv of one letter (a, b, c) are our gn{i} and
# conv{i}; `a/proj` is the projection shortcut. Some files number their convs
# `standardized_conv2d_N` (Keras layer naming), which means the same thing.
_BIT_PREFIX = 'resnet/'
_BIT_CONV_N_RE = re.compile(r'(^|/)standardized_conv2d_\d+/')
_BIT_FIXED = {
    'root_block/standardized_conv2d/kernel': 'conv_root/kernel',
    'group_norm/gamma': 'gn_pre_head/scale',
    'group_norm/beta': 'gn_pre_head/bias',
    'head/conv2d/kernel': 'head/kernel',
    'head/conv2d/bias': 'head/bias',
}
# Inside a unit: our `gn{i}` and `conv{i}` are the norm and conv of letter a, b, c.
_BIT_UNIT_LEAVES = {'conv_proj/kernel': 'a/proj/standardized_conv2d/kernel'}
for _i, _letter in enumerate('abc', 1):
  _BIT_UNIT_LEAVES.update({f'conv{_i}/kernel': f'{_letter}/standardized_conv2d/kernel',
                           f'gn{_i}/scale': f'{_letter}/group_norm/gamma',
                           f'gn{_i}/bias': f'{_letter}/group_norm/beta'})
_BIT_UNIT_RE = re.compile(r'^block(\d+)/unit(\d+)/(.+)$')


def _bit_rename(name: str, fixed: Mapping[str, str], unit_leaves: Mapping[str, str]) -> str | None:
  """Renames one key between the layouts (in the direction of the two tables), or None."""
  if name in fixed:
    return fixed[name]
  match = _BIT_UNIT_RE.match(name)
  if not match or match.group(3) not in unit_leaves:
    return None
  block, unit, leaf = match.groups()
  return f'block{int(block)}/unit{int(unit):02d}/{unit_leaves[leaf]}'


def _bit_path(key: str) -> str:
  """A BiT file key -> our parameter path."""
  path = None
  if key.startswith(_BIT_PREFIX):
    name = _BIT_CONV_N_RE.sub(r'\1standardized_conv2d/', key[len(_BIT_PREFIX):])
    path = _bit_rename(name, _BIT_FIXED, {v: k for k, v in _BIT_UNIT_LEAVES.items()})
  if path is None:
    raise CheckpointError(f'Unrecognised key in a BiT checkpoint: {key}')
  return path


def _bit_key(path: str) -> str:
  """Our parameter path -> the BiT file key."""
  name = _bit_rename(path, {v: k for k, v in _BIT_FIXED.items()}, _BIT_UNIT_LEAVES)
  if name is None:
    raise CheckpointError(f'Parameter {path} has no place in the BiT checkpoint layout')
  return _BIT_PREFIX + name


def _bit_to_params(flat: FlatParams) -> FlatParams:
  out, sources = {}, {}
  for key, value in flat.items():
    path = _bit_path(key)
    if path in out:
      raise CheckpointError(f'BiT checkpoint keys {sources[path]} and {key} both hold {path}')
    value = np.asarray(value)
    if path == 'head/kernel':
      value = value.reshape(value.shape[-2:])  # 1x1 conv (1, 1, C, n) -> Dense (C, n).
    elif path.endswith(('/scale', '/bias')) and path != 'head/bias':
      value = value.reshape(-1)  # GroupNorm parameters, sometimes stored as (1, 1, 1, C).
    out[path], sources[path] = value, key
  return out


def _bit_from_params(flat: FlatParams) -> FlatParams:
  out = {}
  for path, value in flat.items():
    if path == 'head/kernel':
      value = np.asarray(value)[None, None]
    out[_bit_key(path)] = value
  return out


BIT_LAYOUT = Layout(
    name='bit',
    matches_checkpoint=lambda keys: any(key.startswith(_BIT_PREFIX) for key in keys),
    matches_params=lambda keys: any(key.startswith('gn_pre_head/') for key in keys),
    to_params=_bit_to_params,
    from_params=_bit_from_params,
)

# Most specific first; the ViT layout, which accepts anything, last.
LAYOUTS: list[Layout] = [BIT_LAYOUT, VIT_LAYOUT]


def _layout_for_checkpoint(keys: Sequence[str]) -> Layout:
  return next(layout for layout in LAYOUTS if layout.matches_checkpoint(keys))


def _layout_for_params(keys: Sequence[str]) -> Layout:
  return next(layout for layout in LAYOUTS if layout.matches_params(keys))


# ---------------------------------------------------------------------------------------------
# Scanned encoders keep the blocks stacked on a leading axis; files hold one key per block.


def unstack_encoder(flat: FlatParams) -> FlatParams:
  """`.../encoderblock/X` of shape (L, ...) -> `.../encoderblock_{i}/X`."""
  out = {}
  for key, value in flat.items():
    path = key.split('/')
    if _SCANNED_BLOCK in path:
      at = path.index(_SCANNED_BLOCK)
      for i in range(value.shape[0]):
        out['/'.join(path[:at] + [f'{_SCANNED_BLOCK}_{i}'] + path[at + 1:])] = value[i]
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
    stacked_key = '/'.join(path[:at] + [_SCANNED_BLOCK] + path[at + 1:])
    groups.setdefault(stacked_key, {})[index] = value
  for key, by_index in groups.items():
    if sorted(by_index) != list(range(len(by_index))):
      raise CheckpointError(f'Cannot stack {key!r}: block indices {sorted(by_index)} have gaps')
    out[key] = np.stack([np.asarray(by_index[i]) for i in range(len(by_index))])
  return out


def _is_scanned(flat_keys: Sequence[str]) -> bool:
  return any(_SCANNED_BLOCK in key.split('/') for key in flat_keys)


# ---------------------------------------------------------------------------------------------
# Files.


def load(path: str | os.PathLike) -> Params:
  """Reads an original-format `.npz` (ViT, AugReg, hybrid, or any registered layout).

  Strips the `opt/target/` prefix of optimizer-state files and squeezes old (1, 1, 1, C)
  GroupNorm parameters. Returns a nested dict of numpy arrays in our parameter layout, with
  encoder blocks unstacked (`encoderblock_{i}`); `load_pretrained` stacks them for scanned models.

  Raises:
    FileNotFoundError: no file at `path`.
    CheckpointError: the file is not a readable `.npz`.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f'Checkpoint not found: {path}')
  try:
    with np.load(path, allow_pickle=False) as data:
      flat = {key: data[key] for key in data.files}
  except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as e:
    raise CheckpointError(f'{path} is not a readable .npz checkpoint: {e}') from e
  if not flat:
    raise CheckpointError(f'{path} holds no arrays')
  if any(key.startswith(_OPT_PREFIX) for key in flat):
    flat = {key[len(_OPT_PREFIX):] if key.startswith(_OPT_PREFIX) else key: value
            for key, value in flat.items()}
  layout = _layout_for_checkpoint(list(flat))
  return unflatten(unstack_encoder(layout.to_params(flat)))


def _to_numpy(value: Any) -> np.ndarray:
  array = np.asarray(value)
  # Files must load with plain numpy (and in timm): store bfloat16 & co. as float32.
  if array.dtype.kind == 'V' or array.dtype.name in ('bfloat16', 'float8_e4m3fn', 'float8_e5m2'):
    array = array.astype(np.float32)
  return array


def save(params: Mapping[str, Any], path: str | os.PathLike) -> None:
  """Writes `params` as an original-format `.npz` (readable by `load`, the original and timm).

  The file appears atomically: it is written under a temporary name in the same folder and
  renamed, so a crash never leaves a half-written checkpoint at `path`.
  """
  path = os.fspath(path)
  flat = {key: _to_numpy(value) for key, value in flatten(params).items()}
  flat = unstack_encoder(flat)
  flat = _layout_for_params(list(flat)).from_params(flat)
  with atomic_path(path) as tmp, open(tmp, 'wb') as f:
    np.savez(f, **flat)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
  """A temporary file name beside `path`, renamed to `path` only when the block succeeds.

  Readers never see a half-written file, and a failed write leaves an older file intact.
  """
  path = os.fspath(path)
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


# ---------------------------------------------------------------------------------------------
# Checking a checkpoint against a model.


def inspect_params(*, params: Mapping[str, Any], expected: Mapping[str, Any],
                   fail_if_extra: bool = True, fail_if_missing: bool = True,
                   check_shapes: bool = True) -> Params:
  """Checks `params` against the tree `expected` (e.g. a model's init params).

  Returns `params` (nested), cast to the dtypes of `expected`, without extra keys when
  `fail_if_extra` is False. Raises CheckpointError naming every missing or extra key and every
  shape mismatch with both shapes.
  """
  flat, flat_expected = flatten(params), flatten(expected)
  missing = sorted(set(flat_expected) - set(flat))
  extra = sorted(set(flat) - set(flat_expected))
  problems = []
  if missing and fail_if_missing:
    problems.append('missing keys: ' + ', '.join(
        f'{k} (expected {tuple(np.shape(flat_expected[k]))})' for k in missing))
  if extra and fail_if_extra:
    problems.append('unexpected keys: ' + ', '.join(
        f'{k} {tuple(np.shape(flat[k]))}' for k in extra))
  if check_shapes:
    for key in sorted(set(flat) & set(flat_expected)):
      got, want = tuple(np.shape(flat[key])), tuple(np.shape(flat_expected[key]))
      if got != want:
        problems.append(f'shape mismatch at {key}: checkpoint {got}, model {want}')
  if problems:
    raise CheckpointError('Checkpoint does not fit the model: ' + '; '.join(problems))
  for key in missing:
    logging.warning('Checkpoint lacks %s; keeping the initial value', key)
  result = {}
  for key, value in flat.items():
    if key in flat_expected:
      result[key] = np.asarray(value).astype(flat_expected[key].dtype)  # Arrays or ShapeDtypeStructs.
  return unflatten(result)


# ---------------------------------------------------------------------------------------------
# Resolution transfer.


def _square_side(n: int, what: str) -> int:
  side = math.isqrt(n)
  if side * side != n:
    raise CheckpointError(f'{what} has {n} grid tokens, which is not a square; pass the grid '
                          '(h, w) explicitly')
  return side


def interpolate_posembed(posemb: np.ndarray, num_tokens: int | tuple[int, int],
                         has_class_token: bool = True, *,
                         old_grid: tuple[int, int] | None = None,
                         num_prefix_tokens: int | None = None) -> np.ndarray:
  """Resizes a learned position embedding to a new patch grid, as the original library does.

  The prefix rows (class token, and distillation token where present) are kept as they are; the
  grid rows are reshaped to (h, w, D) and resized with `scipy.ndimage.zoom(order=1)`.

  Args:
    posemb: (1, prefix + h_old * w_old, D).
    num_tokens: the new total number of tokens (prefix included) for a square grid, as in the
      original; or the new grid as (h, w), which may be non-square.
    has_class_token: whether row 0 is the class token's (ignored when `num_prefix_tokens` is set).
    old_grid: (h, w) of the stored grid; needed only when it is not square.
    num_prefix_tokens: number of rows before the grid (0 for gap models, 2 for distilled DeiT).

  Returns:
    (1, prefix + h_new * w_new, D) float array of posemb's dtype.
  """
  posemb = np.asarray(posemb)
  if posemb.ndim != 3 or posemb.shape[0] != 1:
    raise CheckpointError(f'Position embedding must have shape (1, tokens, D), got {posemb.shape}')
  prefix_len = int(has_class_token) if num_prefix_tokens is None else num_prefix_tokens
  prefix, grid = posemb[:, :prefix_len], posemb[0, prefix_len:]
  if isinstance(num_tokens, (int, np.integer)):
    side = _square_side(int(num_tokens) - prefix_len, 'The new position embedding')
    new_h, new_w = side, side
  else:
    new_h, new_w = (int(v) for v in num_tokens)
  if old_grid is None:
    side = _square_side(len(grid), 'The stored position embedding')
    old_h, old_w = side, side
  else:
    old_h, old_w = old_grid
    if old_h * old_w != len(grid):
      raise CheckpointError(f'old_grid {old_grid} does not match {len(grid)} stored grid tokens')
  logging.info('Resizing position embedding grid %s -> %s', (old_h, old_w), (new_h, new_w))
  grid = grid.reshape(old_h, old_w, -1)
  if (old_h, old_w) != (new_h, new_w):
    grid = scipy.ndimage.zoom(grid, (new_h / old_h, new_w / old_w, 1), order=1)
  grid = grid.reshape(1, new_h * new_w, -1)
  return np.concatenate([prefix, grid], axis=1).astype(posemb.dtype)


def _num_prefix_tokens(flat_init: Mapping[str, Any]) -> int:
  """Position-embedding rows before the grid: [CLS], DeiT's `dist`, and register tokens."""
  registers = np.shape(flat_init['reg'])[1] if 'reg' in flat_init else 0
  return sum(key in flat_init for key in ('cls', 'dist')) + registers


def load_pretrained(*, pretrained_path: str | os.PathLike, init_params: Mapping[str, Any],
                    model_config: Mapping[str, Any] | Any, reset_head: bool = True,
                    grid: tuple[int, int] | None = None,
                    old_grid: tuple[int, int] | None = None) -> Params:
  """Loads a pre-trained checkpoint into a freshly initialised model for fine-tuning.

  As in the original library: the head is re-initialised (taken from `init_params`), `pre_logits`
  is dropped when `model_config.representation_size` is None, and the position embedding is
  resized to the model's grid. A ViT's patch-embedding kernel of another patch size is resampled
  (FlexiViT's pseudo-inverse resize, `flexi.resample_patchemb`). Everything else must fit exactly: a missing, extra or mis-shaped
  key raises CheckpointError naming it. Scanned models get their blocks stacked.

  Args:
    pretrained_path: `.npz` in any registered layout.
    init_params: the fine-tuning model's initial parameters (shapes, dtypes and the new head).
    model_config: the fine-tuning model's config (reads `representation_size`).
    reset_head: keep the checkpoint's head instead when False (shapes must then fit).
    grid: the model's patch grid (h, w) when it is not square.
    old_grid: the checkpoint's patch grid when it is not square.
  """
  flat = flatten(load(pretrained_path))
  flat_init = flatten(init_params)
  representation_size = (model_config.get('representation_size')
                         if hasattr(model_config, 'get') else None)
  for key in list(flat):
    top = key.split('/')[0]
    if top == 'pre_logits' and representation_size is None:
      del flat[key]  # Fine-tuning without a representation layer, as in the paper.
    elif top in _HEADS and reset_head:
      del flat[key]
  for key, value in flat_init.items():
    top = key.split('/')[0]
    if (top in _HEADS and reset_head) or (top == 'pre_logits' and key not in flat):
      flat[key] = np.asarray(value)
  if _is_scanned(list(flat_init)):
    flat = stack_encoder(flat)

  embedding = 'embedding/kernel'
  if embedding in flat and 'conv_root/kernel' not in flat_init:
    old, new = np.shape(flat[embedding]), np.shape(flat_init[embedding])
    if old[:2] != new[:2] and old[2:] == new[2:]:
      from vit_jax import flexi  # pylint: disable=g-import-not-at-top
      logging.info('Resampling the patch embedding %s -> %s (FlexiViT)', old[:2], new[:2])
      flat[embedding] = flexi.resample_patchemb(flat[embedding], new[:2])

  posemb_key = next((k for k in flat_init if k.endswith('posembed_input/pos_embedding')), None)
  if posemb_key and posemb_key in flat:
    old, new = np.asarray(flat[posemb_key]), np.shape(flat_init[posemb_key])
    # A width mismatch is not resizable: inspect_params reports it with every other mismatch.
    if old.shape != new and old.shape[-1] == new[-1]:
      prefix = _num_prefix_tokens(flat_init)
      flat[posemb_key] = interpolate_posembed(
          old, grid if grid is not None else new[1], num_prefix_tokens=prefix, old_grid=old_grid)
  return inspect_params(params=unflatten(flat), expected=unflatten(flat_init))


# big_vision's layout lives in its own module, which adds itself to LAYOUTS when imported.
from vit_jax import checkpoint_big_vision  # pylint: disable=g-import-not-at-top,unused-import,wrong-import-position
