"""One entry point to every model of the zoo: `get_model(name, num_classes=...)`.

As in the original library, `models.VisionTransformer(num_classes=..., **models.MODEL_CONFIGS[name])`
also works for the ViT family.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax import families
from vit_jax.models_vit import VisionTransformer
from vit_jax.zoo import MODEL_CONFIGS, MODEL_FAMILIES

__all__ = ['MODEL_CONFIGS', 'MODEL_FAMILIES', 'VisionTransformer', 'get_model', 'init_shapes',
           'model_class']


def model_class(name: str) -> type[nn.Module]:
  """The Flax module class of a zoo entry (its family's); KeyError naming the known models."""
  return families.of_model(name).module


def get_model(name: str, *, num_classes: int | None, **overrides: Any) -> nn.Module:
  """Builds zoo model `name`; `overrides` replace config fields (nested ones as dicts).

  Example: `get_model('ViT-B_16', num_classes=10, dtype='bfloat16',
  transformer={'dropout_rate': 0.1})`.
  """
  cls = model_class(name)
  config = MODEL_CONFIGS[name].to_dict()
  for key, value in overrides.items():
    if isinstance(value, dict) and isinstance(config.get(key), dict):
      config[key] = {**config[key], **value}
    else:
      config[key] = value
  return cls(num_classes=num_classes, **config)


def init_shapes(model: nn.Module, image_size: int | tuple[int, int]) -> dict[str, Any]:
  """Every variable collection of `model` fed `image_size` images, as `jax.ShapeDtypeStruct`s.

  Nothing is computed or allocated: this is what checkpoint loaders check files against.
  `intermediates` (sown by some modules) is left out; it is not state.
  """
  if isinstance(image_size, int):
    image_size = (image_size, image_size)
  # Abstract image and key (made under eval_shape): no array is created, so this also works
  # with compile-only devices as the default.
  image = jax.ShapeDtypeStruct((1, *image_size, 3), jnp.float32)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), image)
  return {k: v for k, v in shapes.items() if k != 'intermediates'}
