"""Reading and writing `.npz` checkpoints in every registered layout.

A checkpoint is one `np.savez` file of flat `/`-joined keys; a layout (`layout.Layout`) maps
those keys to our parameter paths and back. `load` picks the layout from the file's keys (most
specific first), `save` from the parameters' paths.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from vit_jax.checkpoint import big_transfer
from vit_jax.checkpoint import big_vision
from vit_jax.checkpoint import files
from vit_jax.checkpoint import tree
from vit_jax.checkpoint.errors import CheckpointError
from vit_jax.checkpoint.layout import is_state_dict_npz
from vit_jax.checkpoint.layout import Layout
from vit_jax.checkpoint.layout import VIT_LAYOUT

Params = dict[str, Any]

_OPT_PREFIX = 'opt/target/'
# Most specific first; the ViT layout, which accepts anything, last.
LAYOUTS: list[Layout] = [big_vision.LAYOUT, big_transfer.LAYOUT, VIT_LAYOUT]


def layout_for_checkpoint(keys: Sequence[str]) -> Layout:
  """The layout of a file with these keys."""
  return next(layout for layout in LAYOUTS if layout.matches_checkpoint(keys))


def layout_for_params(keys: Sequence[str]) -> Layout:
  """The layout `save` writes parameters with these flat paths in."""
  return next(layout for layout in LAYOUTS if layout.matches_params(keys))


def to_params(flat: Mapping[str, Any]) -> Params:
  """The arrays of an `.npz` in any registered layout as our nested parameters.

  Strips the `opt/target/` prefix of optimizer-state files and squeezes old (1, 1, 1, C)
  GroupNorm parameters; encoder blocks come unstacked (`encoderblock_{i}`).
  """
  if any(key.startswith(_OPT_PREFIX) for key in flat):
    flat = {key[len(_OPT_PREFIX):] if key.startswith(_OPT_PREFIX) else key: value
            for key, value in flat.items()}
  layout = layout_for_checkpoint(list(flat))
  return tree.unflatten(tree.unstack_encoder(layout.to_params(dict(flat))))


def load(path: str | os.PathLike) -> Params:
  """Reads an original-format `.npz` (ViT, AugReg, hybrid, or any registered layout).

  Returns a nested dict of numpy arrays in our parameter layout (see `to_params`);
  `load_pretrained` stacks the encoder blocks for scanned models. An `.npz` of dotted torch
  names (`layout.is_state_dict_npz`) is a state dict saved with numpy, which only a family's
  key map reads: it is refused here, and `models.loader.read_file` (or `tools.convert`) reads it.

  Raises:
    FileNotFoundError: no file at `path`.
    CheckpointError: the file is not a readable `.npz`, or holds a torch state dict.
  """
  flat = files.read_npz(path)
  if is_state_dict_npz(list(flat)):
    example = next(key for key in flat if '.' in key)
    raise CheckpointError(
        f'{path} holds a torch state dict saved with numpy (dotted keys such as {example!r}), '
        'not a parameter tree: read it with vit_jax.models.loader.read_file or load, or '
        'convert it with python -m vit_jax.tools.convert')
  return to_params(flat)


def save(params: Mapping[str, Any], path: str | os.PathLike) -> None:
  """Writes `params` as an original-format `.npz` (readable by `load`, the original and timm).

  The file appears atomically (`paths.atomic_local_path`), so a crash never leaves a half-written
  checkpoint at `path`.
  """
  flat = {key: tree.to_numpy(value) for key, value in tree.flatten(params).items()}
  flat = tree.unstack_encoder(flat)
  files.write_npz(layout_for_params(list(flat)).from_params(flat), path)
