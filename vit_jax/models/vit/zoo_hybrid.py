"""Hybrid R+ViT configs: a ResNet stem (BiT-style, post-activation) feeding a ViT.

The names and fields are the original library's. The ResNet's units per stage are in
`resnet.num_layers`; the ViT then takes `patches.size` patches of the ResNet's feature map, so
R50+ViT-B/16 has 1x1 patches on a stride-16 map and R+ViT-Ti/16 8x8 patches on the stride-4 root.
"""

import ml_collections

from vit_jax.models.vit import zoo as vit_zoo


# name: (ViT variant, feature-map patch, units per ResNet stage).
_HYBRIDS = {
    'R50+ViT-B_16': ('B', 1, (3, 4, 9)),
    'R26+ViT-B_32': ('B', 1, (2, 2, 2, 2)),
    'R26+ViT-S_32': ('S', 1, (2, 2, 2, 2)),
    'R50+ViT-L_32': ('L', 1, (3, 4, 6, 3)),
    'R+ViT-Ti_16': ('Ti', 8, ()),  # Root only: 8x8 patches on the /4 map, so really /32.
}


def hybrid_config(variant: str, patch: int, num_layers: tuple[int, ...], *,
                  name: str) -> ml_collections.ConfigDict:
  """A hybrid config: `vit_config(variant, patch)` plus `resnet` (units per stage, width x1)."""
  config = vit_zoo.vit_config(variant, patch, name=name)
  config.resnet = ml_collections.ConfigDict({'num_layers': num_layers, 'width_factor': 1})
  return config


CONFIGS = {name: hybrid_config(variant, patch, num_layers, name=name)
           for name, (variant, patch, num_layers) in _HYBRIDS.items()}
