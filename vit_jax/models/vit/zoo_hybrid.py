"""Hybrid R+ViT configs: a ResNet stem (BiT-style, post-activation) feeding a ViT.

The names and fields are the original library's. The ResNet's units per stage are in
`resnet.num_layers`; the ViT then takes `patches.size` patches of the ResNet's feature map, so
R50+ViT-B/16 has 1x1 patches on a stride-16 map and R+ViT-Ti/16 8x8 patches on the stride-4 root.
"""

import ml_collections

from vit_jax.models.vit import zoo as vit_zoo


# name: (ViT variant, feature-map patch, units per ResNet stage, dropout). The dropout is the
# original's: R50+ViT-B/16 sets 0.1, R50+ViT-L/32 starts from L/16's 0.1, the others inherit 0.
_HYBRIDS = {
    'R50+ViT-B_16': ('B', 1, (3, 4, 9), 0.1),
    'R26+ViT-B_32': ('B', 1, (2, 2, 2, 2), 0.0),
    'R26+ViT-S_32': ('S', 1, (2, 2, 2, 2), 0.0),
    'R50+ViT-L_32': ('L', 1, (3, 4, 6, 3), 0.1),
    'R+ViT-Ti_16': ('Ti', 8, (), 0.0),  # Root only: 8x8 patches on the /4 map, so really /32.
}


def hybrid_config(variant: str, patch: int, num_layers: tuple[int, ...], *, name: str,
                  dropout_rate: float = 0.0) -> ml_collections.ConfigDict:
  """A hybrid config: `vit_config(variant, patch)` plus `resnet` (units per stage, width x1)."""
  config = vit_zoo.vit_config(variant, patch, name=name, dropout_rate=dropout_rate)
  config.resnet = ml_collections.ConfigDict({'num_layers': num_layers, 'width_factor': 1})
  return config


CONFIGS = {name: hybrid_config(variant, patch, num_layers, name=name, dropout_rate=dropout)
           for name, (variant, patch, num_layers, dropout) in _HYBRIDS.items()}
