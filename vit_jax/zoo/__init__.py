"""The model zoo: every named model config, by family. Imports no model code (only configs)."""

import ml_collections

from vit_jax.zoo import cnn
from vit_jax.zoo import hybrid
from vit_jax.zoo import resnet
from vit_jax.zoo import resnet_v1
from vit_jax.zoo import swin
from vit_jax.zoo import vit

_FAMILY_MODULES = (vit, swin, hybrid, resnet, resnet_v1, cnn)

MODEL_CONFIGS: dict[str, ml_collections.ConfigDict] = {}
MODEL_FAMILIES: dict[str, str] = {}
for _module in _FAMILY_MODULES:
  for _name, _config in _module.CONFIGS.items():
    if _name in MODEL_CONFIGS:
      raise ValueError(f'Model name {_name!r} is registered twice')
    MODEL_CONFIGS[_name] = _config
    MODEL_FAMILIES[_name] = _module.FAMILY
