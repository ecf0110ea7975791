"""big_vision `.npz` parameter files (SigLIP / SigLIP 2 image towers, FlexiViT, ...).

big_vision's `models/vit.py` names modules with linen's per-type numbering, so a block holds
`LayerNorm_0`, `MultiHeadDotProductAttention_0`, `LayerNorm_1`, `MlpBlock_0` (the original
release: `..._1`, `LayerNorm_2`, `MlpBlock_3`), and its learned position embedding is the top-level
`pos_embedding` covering the patch grid only: the `cls` token is concatenated after it is added,
so in our layout its row is zero. Encoders are usually scanned (`Transformer/encoderblock/...`
with a leading layer axis). The MAP head (`MAPHead_0`) has our names already. Files of a two-tower
model (SigLIP) nest the image tower under `params/img/`; the text tower and the logit scale and
bias (`txt/`, `t`, `b`) are dropped. `npz.LAYOUTS` lists this layout, so `checkpoint.load` and
`load_pretrained` read these files directly.
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping, Sequence

from absl import logging
import numpy as np

from vit_jax.checkpoint import files
from vit_jax.checkpoint import tree
from vit_jax.checkpoint.errors import CheckpointError
from vit_jax.checkpoint.layout import Layout

FlatParams = dict[str, np.ndarray]

_POSEMB_BV = 'pos_embedding'
_POSEMB = 'Transformer/posembed_input/pos_embedding'
# Block children: big_vision name -> ours.
_BLOCK_NAMES = {'LayerNorm_0': 'LayerNorm_0',
                'MultiHeadDotProductAttention_0': 'MultiHeadDotProductAttention_1',
                'LayerNorm_1': 'LayerNorm_2', 'MlpBlock_0': 'MlpBlock_3'}
_BLOCK_RE = re.compile(r'^(Transformer/encoderblock(?:_\d+)?)/([^/]+)(/.*)$')
_TOWER = 'img/'


def _strip_prefixes(keys: Sequence[str]) -> dict[str, str]:
  """File key -> key inside the image tower, for the keys that belong to it."""
  strip = {key: key[len('params/'):] if key.startswith('params/') else key for key in keys}
  if any(key.startswith(_TOWER) for key in strip.values()):
    strip = {k: v[len(_TOWER):] for k, v in strip.items() if v.startswith(_TOWER)}
  return strip


def is_big_vision(keys: Sequence[str]) -> bool:
  """Whether file keys are a big_vision ViT (tower alone, `params/...` or `params/img/...`)."""
  inner = set(_strip_prefixes(keys).values())
  if 'embedding/kernel' not in inner:
    return False
  return _POSEMB_BV in inner or any(
      (m := _BLOCK_RE.match(key)) and m.group(2) == 'MlpBlock_0' for key in inner)


def _rename_block(key: str, table: Mapping[str, str]) -> str:
  match = _BLOCK_RE.match(key)
  if not match:
    return key
  block, child, rest = match.groups()
  if child not in table:
    raise CheckpointError(
        f'Unrecognised key in a big_vision checkpoint: {key} (a block holds '
        f'{", ".join(sorted(table))})')
  return f'{block}/{table[child]}{rest}'


def to_params(flat: FlatParams) -> FlatParams:
  """big_vision file keys -> our flat parameters (blocks still stacked where the file's are)."""
  strip = _strip_prefixes(list(flat))
  dropped = sorted(set(flat) - set(strip))
  if dropped:
    logging.info('Reading the image tower; dropping %d other keys (%s, ...)', len(dropped),
                 dropped[0])
  out = {}
  for key, inner in strip.items():
    value = np.asarray(flat[key])
    if inner == _POSEMB_BV:
      inner = _POSEMB
      if 'cls' in strip.values():  # big_vision adds no position to [CLS]: a zero row.
        value = np.concatenate([np.zeros_like(value[:, :1]), value], axis=1)
    out[_rename_block(inner, _BLOCK_NAMES)] = value
  return out


def from_params(flat: Mapping[str, Any], *, scan: bool = True,
                prefix: str = '') -> FlatParams:
  """Our flat ViT parameters -> big_vision file keys (the inverse of `to_params`).

  Args:
    flat: our flat parameters (stacked or per-layer blocks).
    scan: write the encoder stacked (`encoderblock/...`), as big_vision's scanned models do.
    prefix: e.g. 'params/img/' for the image-tower layout of a SigLIP file.

  Raises:
    CheckpointError: a [CLS] position row that is not zero (big_vision has none).
  """
  flat = {k: tree.to_numpy(v) for k, v in flat.items()}
  flat = tree.stack_encoder(flat) if scan else tree.unstack_encoder(flat)
  ours_to_bv = {v: k for k, v in _BLOCK_NAMES.items()}
  out = {}
  for key, value in flat.items():
    if key == _POSEMB:
      key = _POSEMB_BV
      if 'cls' in flat:
        if np.any(value[:, 0]):
          raise CheckpointError(
              'big_vision models add no position embedding to [CLS], but row 0 of '
              f'{_POSEMB} is not zero')
        value = value[:, 1:]
    out[prefix + _rename_block(key, ours_to_bv)] = value
  return out


def save(params: Mapping[str, Any], path: str | os.PathLike, *, scan: bool = True,
         prefix: str = '') -> None:
  """Writes `params` as a big_vision `.npz` (see `from_params`), atomically."""
  files.write_npz(from_params(tree.flatten(params), scan=scan, prefix=prefix), path)


LAYOUT = Layout(
    name='big_vision',
    matches_checkpoint=is_big_vision,
    matches_params=lambda keys: False,  # `checkpoint.save` writes the original layout.
    to_params=to_params,
    from_params=from_params,
)
