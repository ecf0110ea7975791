"""Preparing a pre-trained checkpoint for fine-tuning a (possibly different) model.

`inspect_params` checks parameters against a model's and names every misfit. `load_pretrained`
(the original library's name) reads an `.npz` in any layout into a fresh ViT, hybrid or ResNet:
head re-initialised, `pre_logits` dropped, position embedding and patch kernel resized.
`load_pretrained_swin` does the same for Swin from any Swin file (resizing the relative position
bias tables instead).
"""

from __future__ import annotations

import math
import os
import re
from typing import Any, Mapping, Sequence

from absl import logging
import numpy as np

from vit_jax.checkpoint import files
from vit_jax.checkpoint import npz
from vit_jax.checkpoint import resize
from vit_jax.checkpoint import swin_keys
from vit_jax.checkpoint import tree
from vit_jax.checkpoint.errors import CheckpointError
from vit_jax.checkpoint.errors import SwinCheckpointError

Params = dict[str, Any]
# Classifier heads, re-initialised for fine-tuning ('head_dist': DeiT's distillation head).
_HEADS = ('head', 'head_dist')
_STAGE_RE = re.compile(r'^layers_(\d+)/')


def inspect_params(*, params: Mapping[str, Any], expected: Mapping[str, Any],
                   fail_if_extra: bool = True, fail_if_missing: bool = True,
                   check_shapes: bool = True) -> Params:
  """Checks `params` against the tree `expected` (e.g. a model's init params).

  Returns `params` (nested), cast to the dtypes of `expected`, without extra keys when
  `fail_if_extra` is False. Raises CheckpointError naming every missing or extra key and every
  shape mismatch with both shapes.
  """
  flat, flat_expected = tree.flatten(params), tree.flatten(expected)
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
  return tree.unflatten(result)


def _num_prefix_tokens(flat_init: Mapping[str, Any]) -> int:
  """Position-embedding rows before the grid: [CLS], DeiT's `dist`, and register tokens."""
  registers = np.shape(flat_init['reg'])[1] if 'reg' in flat_init else 0
  return sum(key in flat_init for key in ('cls', 'dist')) + registers


def load_pretrained(*, pretrained_path: str | os.PathLike | Mapping[str, Any],
                    init_params: Mapping[str, Any],
                    model_config: Mapping[str, Any] | Any, reset_head: bool = True,
                    grid: tuple[int, int] | None = None,
                    old_grid: tuple[int, int] | None = None, posemb_resize: str = 'zoom',
                    resample_patch_embedding: bool = False) -> Params:
  """Loads a pre-trained checkpoint into a freshly initialised model for fine-tuning.

  As in the original library: the head is re-initialised (taken from `init_params`), `pre_logits`
  is dropped when `model_config.representation_size` is None, and the position embedding is
  resized to the model's grid. A ViT's patch-embedding kernel of another patch size is an error
  unless `resample_patch_embedding` (FlexiViT's pseudo-inverse resize,
  `resize.resample_patchemb`). Everything else must fit exactly: a missing, extra or mis-shaped
  key raises CheckpointError naming it. Scanned models get their blocks stacked.

  Args:
    pretrained_path: `.npz` in any registered layout, or its parameters (nested).
    init_params: the fine-tuning model's initial parameters (shapes, dtypes and the new head).
    model_config: the fine-tuning model's config (reads `representation_size`).
    reset_head: keep the checkpoint's head instead when False (shapes must then fit).
    grid: the model's patch grid (h, w) when it is not square.
    old_grid: the checkpoint's patch grid when it is not square.
    posemb_resize: how the position embedding is resized, `resize.POSEMB_METHODS`: 'zoom' (the
      original's and big_vision's fine-tuning initialisation), 'flexi' (FlexiViT's model run at
      another patch size) or 'timm' (timm's bicubic, antialiased).
    resample_patch_embedding: resample a patch embedding of another patch size (FlexiViT)
      instead of raising; the original raised a shape error.
  """
  if posemb_resize not in resize.POSEMB_METHODS:
    raise CheckpointError(f'posemb_resize={posemb_resize!r}: expected one of '
                          f'{sorted(resize.POSEMB_METHODS)}')
  if isinstance(pretrained_path, (str, os.PathLike)):
    pretrained_path = npz.load(pretrained_path)
  flat = tree.flatten(pretrained_path)
  flat_init = tree.flatten(init_params)
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
  if tree.is_scanned(list(flat_init)):
    flat = tree.stack_encoder(flat)

  embedding = 'embedding/kernel'
  if embedding in flat and 'conv_root/kernel' not in flat_init:
    old, new = np.shape(flat[embedding]), np.shape(flat_init[embedding])
    if old[:2] != new[:2] and old[2:] == new[2:]:
      if not resample_patch_embedding:
        raise CheckpointError(
            f'{pretrained_path} has {old[0]}x{old[1]} patches, the model {new[0]}x{new[1]}: set '
            'resample_patch_embedding=True (config.resample_patch_embedding) to resample the '
            'kernel as FlexiViT does, or pick the model of the checkpoint\'s patch size')
      logging.warning('Resampling the patch embedding %s -> %s (FlexiViT)', old[:2], new[:2])
      flat[embedding] = resize.resample_patchemb(flat[embedding], new[:2])

  posemb_key = next((k for k in flat_init if k.endswith('posembed_input/pos_embedding')), None)
  if posemb_key and posemb_key in flat:
    old, new = np.asarray(flat[posemb_key]), np.shape(flat_init[posemb_key])
    # A width mismatch is not resizable: inspect_params reports it with every other mismatch.
    if old.shape != new and old.shape[-1] == new[-1]:
      prefix = _num_prefix_tokens(flat_init)
      flat[posemb_key] = resize.interpolate_posembed(
          old, grid if grid is not None else new[1], num_prefix_tokens=prefix, old_grid=old_grid,
          method=posemb_resize)
  return inspect_params(params=tree.unflatten(flat), expected=tree.unflatten(flat_init))


def load_swin(path: str | os.PathLike) -> Params:
  """Our (nested numpy) Swin parameters from any Swin file.

  `.npz`: our parameter tree as `checkpoint.save` writes it (or a state dict saved with numpy,
  told apart by its dotted keys; see `swin_keys`). `.safetensors`, `.pth`/`.pt`/`.bin`: an
  official or timm state dict.
  """
  if os.fspath(path).lower().endswith('.npz'):
    return npz.load(path)
  return swin_keys.from_state_dict(files.read_state_dict(path))


def load_pretrained_swin(pretrained: str | os.PathLike | Mapping[str, Any],
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
    pretrained: a checkpoint path (see `load_swin`), a state dict of numpy
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
    params = load_swin(pretrained)
  elif any('.' in key for key in pretrained):
    params = swin_keys.from_state_dict(pretrained)
  else:
    params = pretrained
  flat = {key: np.asarray(value) for key, value in tree.flatten(params).items()}
  # Only shapes and dtypes of the target matter, so `jax.eval_shape` output works too; broadcast
  # zero-strided views stand in for it without allocating.
  flat_init = {key: np.broadcast_to(np.zeros((), value.dtype), value.shape)
               for key, value in tree.flatten(init_params).items()}

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
    if (not key.endswith(swin_keys.TABLE) or key not in flat
        or np.shape(flat[key]) == np.shape(target)):
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
    flat[key] = resize.resize_relative_position_bias_table(flat[key], new, old_window=old,
                                                    method=method)
  return inspect_params(params=tree.unflatten(flat), expected=tree.unflatten(flat_init))
