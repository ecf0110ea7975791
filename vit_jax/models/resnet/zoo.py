"""Classic BatchNorm ResNets (v1.5), the baselines trained from scratch."""

import ml_collections


# name: (units per stage, bottleneck units).
_RESNETS = {
    'ResNet-18': ((2, 2, 2, 2), False),
    'ResNet-34': ((3, 4, 6, 3), False),
    'ResNet-50': ((3, 4, 6, 3), True),
}

CONFIGS = {
    name: ml_collections.ConfigDict(
        {'model_name': name, 'num_layers': num_layers, 'bottleneck': bottleneck})
    for name, (num_layers, bottleneck) in _RESNETS.items()
}
