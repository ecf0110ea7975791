"""The CIFAR-10 baseline CNN as a Flax linen module."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.models import layers
from vit_jax.models import outputs

Array = jax.Array


class CifarCNN(nn.Module):
  """The CIFAR-10 baseline CNN: (3x3 conv, ReLU, 2x2 max-pool) per width, then two Dense.

  Attributes:
    num_classes: head size; None returns the hidden Dense features, which are also sown as
      `features` (`models.outputs`).
    channels: conv widths, one block each.
    hidden_size: width of the Dense layer before the head.
    dtype: compute dtype.
    param_dtype: parameter dtype.
    model_name: zoo name, informational.
  """
  num_classes: Optional[int]
  channels: Sequence[int] = (32, 64, 128)
  hidden_size: int = 256
  dtype: Any = 'float32'
  param_dtype: Any = 'float32'
  model_name: Optional[str] = None

  @nn.compact
  def __call__(self, inputs: Array, *, train: bool = False) -> Array:
    del train  # No dropout or batch statistics.
    layers.check_images(inputs, 'CifarCNN')
    if inputs.shape[1] % 2**len(self.channels) or inputs.shape[2] % 2**len(self.channels):
      raise ValueError(f'CifarCNN halves the image {len(self.channels)} times; '
                       f'{inputs.shape[1:3]} is not divisible by {2**len(self.channels)}')
    dtype, param_dtype = layers.as_dtype(self.dtype), layers.as_dtype(self.param_dtype)
    x = inputs.astype(dtype)
    for i, features in enumerate(self.channels, start=1):
      x = nn.Conv(features, (3, 3), padding='SAME', dtype=dtype, param_dtype=param_dtype,
                  name=f'conv{i}')(x)
      x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))
    x = jnp.reshape(x, (x.shape[0], -1))
    x = nn.relu(nn.Dense(self.hidden_size, dtype=dtype, param_dtype=param_dtype,
                         name='dense')(x))
    outputs.sow(self, outputs.FEATURES, x)
    if self.num_classes is None:
      return x
    x = nn.Dense(self.num_classes, dtype=dtype, param_dtype=param_dtype, name='head')(x)
    return x.astype(jnp.float32)
