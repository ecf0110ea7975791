"""The Swin architecture that checkpoint parameters describe, read from their shapes.

Heads come from the relative position bias tables ((2w - 1)^2, heads), which also give the
window w; widths and the MLP ratio from the first block's kernels. The results are config dicts;
the family record (`family.py`) builds models from them.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

from vit_jax.checkpoint import tree
from vit_jax.checkpoint.errors import CheckpointError
from vit_jax.models.swin import timm_keys

_BLOCK_RE = re.compile(r'^layers_(\d+)/blocks_(\d+)/')


def _shape(flat: Mapping[str, Any], key: str) -> tuple[int, ...]:
  return tree.leaf_shape(flat, key, 'Swin')


def matches(flat: Mapping[str, Any]) -> bool:
  """Whether flat parameters (or state-dict keys) are a Swin Transformer's."""
  return timm_keys.has_bias_tables(list(flat))


def config_from_params(flat: Mapping[str, Any]) -> dict[str, Any]:
  """The `SwinTransformer` fields (and `num_classes`) that fit flat Swin parameters.

  Heads come from the relative position bias tables ((2w - 1)^2, heads), which also give the
  window w; widths and the MLP ratio from the first block's kernels.
  """
  kernel = _shape(flat, 'patch_embed/proj/kernel')
  depths: dict[int, set[int]] = {}
  for match in filter(None, map(_BLOCK_RE.match, flat)):
    depths.setdefault(int(match.group(1)), set()).add(int(match.group(2)))
  stages = sorted(depths)
  if not stages or stages != list(range(len(stages))):
    raise CheckpointError(f'Swin stages {stages} are missing or have gaps')
  heads, windows = [], set()
  for i in stages:
    rows, num_heads = _shape(flat, f'layers_{i}/blocks_0/attn/relative_position_bias_table')
    heads.append(num_heads)
    windows.add((math.isqrt(rows) + 1) // 2)
  # Stages whose map fits in one window use a smaller table; the largest is the configured one.
  embed_dim = kernel[-1]
  mlp_hidden = _shape(flat, 'layers_0/blocks_0/mlp/fc1/kernel')[-1]
  return dict(
      embed_dim=embed_dim, depths=tuple(len(depths[i]) for i in stages), num_heads=tuple(heads),
      window_size=max(windows), patch_size=kernel[0], mlp_ratio=mlp_hidden / embed_dim,
      num_classes=_shape(flat, 'head/kernel')[-1] if 'head/kernel' in flat else None)


def image_size(config: Mapping[str, Any]) -> int:
  """The released resolution of a Swin config: the last stage's map is one window."""
  window = config['window_size']
  window = window if isinstance(window, int) else window[0]
  return window * config['patch_size'] * 2**(len(config['depths']) - 1)
