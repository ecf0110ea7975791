"""Fitting pre-trained Swin weights to a fresh model that may differ in resolution or window.

The Swin family's `Family.fit_pretrained`: its checkpoints have no position embedding to resize
but relative position bias tables (`bias_tables`), and its head is re-initialised with zeros as
the official loader does. Files are read elsewhere (`models.loader.read_file`, any format); this
takes their parameters.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping, Sequence

from absl import logging
import numpy as np

from vit_jax.checkpoint import pretrained
from vit_jax.checkpoint import tree
from vit_jax.checkpoint.errors import ConversionError
from vit_jax.models.swin import bias_tables
from vit_jax.models.swin import timm_keys

Params = dict[str, Any]
_STAGE_RE = re.compile(r'^layers_(\d+)/')


def fit_pretrained(params: Mapping[str, Any], init_params: Mapping[str, Any], *,
                   method: str = 'bicubic', reset_head: bool | None = None,
                   windows: Sequence[int | Sequence[int]] | None = None,
                   old_windows: Sequence[int | Sequence[int]] | None = None) -> Params:
  """Fits pre-trained Swin parameters into a fresh model.

  Relative position bias tables whose shape differs from the model's are resized (official:
  bicubic; timm: geometric); indices and masks need nothing, the model recomputes them. The head
  is re-initialised with zeros, as the official loader does, when its shape differs (another
  number of classes), and dropped when the model has none. Everything else must fit: missing,
  extra or mis-shaped keys raise a CheckpointError naming them.

  Args:
    params: our parameters (nested or flat), or a state dict of numpy arrays (official or timm
      layout, told apart by its dotted keys).
    init_params: the target model's initial parameters (shapes, dtypes, head).
    method: table resize, 'bicubic' or 'geometric'.
    reset_head: True always re-initialises the head, False always keeps the checkpoint's, None
      re-initialises it only when its shape differs.
    windows: the target model's effective window per stage (see `model.stage_windows`);
      needed only for non-square windows, else inferred from the table shapes.
    old_windows: the checkpoint's window per stage, likewise.

  Returns:
    Nested parameters with the structure and dtypes of `init_params`.
  """
  if any('.' in key for key in params):
    params = timm_keys.from_state_dict(params)
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
    if (not key.endswith(timm_keys.TABLE) or key not in flat
        or np.shape(flat[key]) == np.shape(target)):
      continue
    stage = int(_STAGE_RE.match(key).group(1)) if _STAGE_RE.match(key) else None
    old = old_windows[stage] if old_windows is not None and stage is not None else None
    new = windows[stage] if windows is not None and stage is not None else None
    if new is None:
      side = math.isqrt(np.shape(target)[0])
      if side * side != np.shape(target)[0]:
        raise ConversionError(f'Swin {key}: the model window is not square; pass windows')
      new = (side + 1) // 2
    if np.shape(flat[key])[1] != np.shape(target)[1]:
      raise ConversionError(f'Swin {key}: checkpoint has {np.shape(flat[key])[1]} heads, the '
                            f'model {np.shape(target)[1]}')
    logging.info('Resizing %s %s -> %s (%s)', key, np.shape(flat[key]), np.shape(target), method)
    flat[key] = bias_tables.resize_relative_position_bias_table(flat[key], new, old_window=old,
                                                                method=method)
  return pretrained.inspect_params(params=tree.unflatten(flat),
                                   expected=tree.unflatten(flat_init))
