"""Preparing a pre-trained checkpoint for fine-tuning a (possibly different) model.

`inspect_params` checks parameters against a model's and names every misfit; `num_classes` reads
the head size. `fit_pretrained` fits parameters into a fresh model as the original library does:
head re-initialised, `pre_logits` dropped, position embedding and patch kernel resized; the
families whose checkpoints need nothing else (ViT and hybrids, BiT, ResNet, the CNN) use it.
`load_pretrained` (the original library's name and arguments) reads an `.npz` in any layout and
fits it. A family with other needs fits in its own folder (Swin: `models/swin/pretrained.py`);
`models.loader.load_pretrained` reads any file and fits it through the family's record.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from absl import logging
import numpy as np

from vit_jax.checkpoint import npz
from vit_jax.checkpoint import resize
from vit_jax.checkpoint import tree
from vit_jax.checkpoint.errors import CheckpointError

Params = dict[str, Any]
# Classifier heads, re-initialised for fine-tuning ('head_dist': DeiT's distillation head).
_HEADS = ('head', 'head_dist')


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


def fit_pretrained(params: Mapping[str, Any], *, init_params: Mapping[str, Any],
                   model_config: Mapping[str, Any] | Any, reset_head: bool = True,
                   grid: tuple[int, int] | None = None,
                   old_grid: tuple[int, int] | None = None, posemb_resize: str = 'zoom',
                   resample_patch_embedding: bool = False) -> Params:
  """Fits pre-trained parameters into a freshly initialised model for fine-tuning.

  As in the original library: the head is re-initialised (taken from `init_params`), `pre_logits`
  is dropped when `model_config.representation_size` is None, and the position embedding is
  resized to the model's grid. A ViT's patch-embedding kernel of another patch size is an error
  unless `resample_patch_embedding` (FlexiViT's pseudo-inverse resize,
  `resize.resample_patchemb`). Everything else must fit exactly: a missing, extra or mis-shaped
  key raises CheckpointError naming it. Scanned models get their blocks stacked.

  Args:
    params: the checkpoint's parameters (nested, in our layout: what `npz.load` returns).
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
  flat = tree.flatten(params)
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
            f'The checkpoint has {old[0]}x{old[1]} patches, the model {new[0]}x{new[1]}: set '
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


def load_pretrained(*, pretrained_path: str | os.PathLike | Mapping[str, Any],
                    init_params: Mapping[str, Any], model_config: Mapping[str, Any] | Any,
                    **options: Any) -> Params:
  """The original library's entry point: reads `pretrained_path` and fits it (`fit_pretrained`).

  Args:
    pretrained_path: an `.npz` in any registered layout (`npz.load`), or its parameters (nested).
    init_params: the fine-tuning model's initial parameters.
    model_config: the fine-tuning model's config (reads `representation_size`).
    **options: `fit_pretrained`'s (reset_head, grid, old_grid, posemb_resize,
      resample_patch_embedding).
  """
  if isinstance(pretrained_path, (str, os.PathLike)):
    params = npz.load(pretrained_path)
  else:
    params = pretrained_path
  return fit_pretrained(params, init_params=init_params, model_config=model_config, **options)


def num_classes(flat: Mapping[str, Any]) -> int | None:
  """Head size of any family: the last axis of the head kernel (Dense or 1x1 conv)."""
  heads = [k for k in flat if k.split('/')[0] == 'head' and k.endswith('kernel')]
  return int(np.shape(flat[heads[0]])[-1]) if heads else None
