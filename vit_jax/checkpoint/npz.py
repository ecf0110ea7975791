"""Reading and writing `.npz` checkpoints in every registered layout.

A checkpoint is one `np.savez` file of flat `/`-joined keys; a layout (`layout.Layout`) maps
those keys to our parameter paths and back. `load` picks the layout from the file's keys (most
specific first), `save` from the parameters' paths.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from vit_jax.checkpoint import big_vision
from vit_jax.checkpoint import bit_npz
from vit_jax.checkpoint import files
from vit_jax.checkpoint import swin_keys
from vit_jax.checkpoint import tree
from vit_jax.checkpoint.layout import Layout
from vit_jax.checkpoint.layout import VIT_LAYOUT

Params = dict[str, Any]

_OPT_PREFIX = 'opt/target/'
# Most specific first; the ViT layout, which accepts anything, last.
LAYOUTS: list[Layout] = [big_vision.LAYOUT, bit_npz.LAYOUT, swin_keys.STATE_DICT_NPZ_LAYOUT,
                         VIT_LAYOUT]


def layout_for_checkpoint(keys: Sequence[str]) -> Layout:
  """The layout of a file with these keys."""
  return next(layout for layout in LAYOUTS if layout.matches_checkpoint(keys))


def layout_for_params(keys: Sequence[str]) -> Layout:
  """The layout `save` writes parameters with these flat paths in."""
  return next(layout for layout in LAYOUTS if layout.matches_params(keys))


def load(path: str | os.PathLike) -> Params:
  """Reads an original-format `.npz` (ViT, AugReg, hybrid, or any registered layout).

  Strips the `opt/target/` prefix of optimizer-state files and squeezes old (1, 1, 1, C)
  GroupNorm parameters. Returns a nested dict of numpy arrays in our parameter layout, with
  encoder blocks unstacked (`encoderblock_{i}`); `load_pretrained` stacks them for scanned models.

  Raises:
    FileNotFoundError: no file at `path`.
    CheckpointError: the file is not a readable `.npz`, or its keys fit no layout.
  """
  flat = files.read_npz(path)
  if any(key.startswith(_OPT_PREFIX) for key in flat):
    flat = {key[len(_OPT_PREFIX):] if key.startswith(_OPT_PREFIX) else key: value
            for key, value in flat.items()}
  layout = layout_for_checkpoint(list(flat))
  return tree.unflatten(tree.unstack_encoder(layout.to_params(flat)))


def save(params: Mapping[str, Any], path: str | os.PathLike) -> None:
  """Writes `params` as an original-format `.npz` (readable by `load`, the original and timm).

  The file appears atomically (`files.atomic_path`), so a crash never leaves a half-written
  checkpoint at `path`.
  """
  flat = {key: tree.to_numpy(value) for key, value in tree.flatten(params).items()}
  flat = tree.unstack_encoder(flat)
  files.write_npz(layout_for_params(list(flat)).from_params(flat), path)
