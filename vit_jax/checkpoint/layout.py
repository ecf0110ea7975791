"""`.npz` layouts: how a file's keys map to our flat parameter paths and back.

The original ViT and hybrid files use our names verbatim (our modules are named after them), so
their layout only squeezes the (1, 1, 1, C) GroupNorm parameters that early flax wrote. Other
layouts (big_transfer's, big_vision's) live in their own modules; `npz.LAYOUTS` lists them all.

Every layout is `/`-keyed. An `.npz` of dotted torch names (`is_state_dict_npz`) is a state dict
saved with numpy, not a layout: `npz.load` refuses it, and `models.formats` reads it with the key
map of the family it belongs to.
"""

from __future__ import annotations

import re
from typing import Callable, NamedTuple, Sequence

import numpy as np

FlatParams = dict[str, np.ndarray]

# Hybrid checkpoints written by early flax store GroupNorm scale/bias as (1, 1, 1, C).
_GROUPNORM_RE = re.compile(r'gn(\d+|_root|_proj)$')


class Layout(NamedTuple):
  """How one file layout's keys map to our flat parameter paths."""
  name: str
  matches_checkpoint: Callable[[Sequence[str]], bool]  # on the file's keys
  matches_params: Callable[[Sequence[str]], bool]  # on our flat parameter paths
  to_params: Callable[[FlatParams], FlatParams]
  from_params: Callable[[FlatParams], FlatParams]


def is_state_dict_npz(keys: Sequence[str]) -> bool:
  """Whether `.npz` keys are a torch state dict saved with numpy: dotted names, none `/`-joined."""
  return all('/' not in key for key in keys) and any('.' in key for key in keys)


def _vit_to_params(flat: FlatParams) -> FlatParams:
  out = {}
  for key, value in flat.items():
    path = key.split('/')
    if len(path) > 1 and _GROUPNORM_RE.match(path[-2]) and path[-1] in ('scale', 'bias'):
      value = value.reshape(-1)
    out[key] = value
  return out


# Also the layout of every family whose parameter names are the file's keys (Swin, ResNet, CNN).
VIT_LAYOUT = Layout(
    name='vit',
    matches_checkpoint=lambda keys: True,
    matches_params=lambda keys: True,
    to_params=_vit_to_params,
    from_params=dict,
)
