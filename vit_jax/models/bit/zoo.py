"""BiT ResNetV2 configs (Kolesnikov et al. 2020), named like the released files.

`BiT-M-R50x1` (ImageNet-21k) and `BiT-S-R50x1` (ImageNet-1k) share one architecture; both
prefixes exist so that a name picks the matching `.npz` release.
"""

import ml_collections


# Depth: units per stage.
_DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
_WIDTHS = (1, 2, 3, 4)


def bit_config(depth: int, width_factor: int, *, name: str) -> ml_collections.ConfigDict:
  """A `ResNetV2` config, e.g. `bit_config(50, 1, name='BiT-M-R50x1')`."""
  if depth not in _DEPTHS:
    raise ValueError(f'Unknown BiT depth {depth}; expected one of {sorted(_DEPTHS)}')
  config = ml_collections.ConfigDict()
  config.model_name = name
  config.num_layers = _DEPTHS[depth]
  config.width_factor = width_factor
  return config


CONFIGS = {
    f'BiT-{upstream}-R{depth}x{width}': bit_config(depth, width,
                                                     name=f'BiT-{upstream}-R{depth}x{width}')
    for upstream in ('M', 'S') for depth in _DEPTHS for width in _WIDTHS
}
