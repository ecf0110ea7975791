"""The classic ResNet-18/34/50 (He et al. 2016; v1.5, stride on the 3x3 conv) with BatchNorm.

Running statistics live in the `batch_stats` collection. Takes NHWC images and `train=` like
`VisionTransformer`; `num_classes=None` returns the pooled features.
"""

from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.models import layers
from vit_jax.models import outputs

Array = jax.Array
Dtype = Any

# torchvision's initialisation for ReLU networks (He et al. 2015, fan-out).
_HE_FAN_OUT = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


class ResNetUnit(nn.Module):
  """Post-activation residual unit with BatchNorm: basic (3x3, 3x3) or bottleneck (1x1, 3x3, 1x1).

  v1.5: a bottleneck strides on its 3x3 conv. Paddings are symmetric (k // 2), as in torchvision.
  The last BatchNorm starts at scale zero (Goyal et al. 2017), so each unit starts as identity.
  """
  features: int
  strides: tuple[int, int] = (1, 1)
  bottleneck: bool = False
  bn_momentum: float = 0.9
  bn_eps: float = 1e-5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    def conv(features, size, strides=(1, 1), **kw):
      return nn.Conv(features, (size, size), strides, padding=[(size // 2, size // 2)] * 2,
                     use_bias=False, kernel_init=_HE_FAN_OUT, dtype=self.dtype,
                     param_dtype=self.param_dtype, **kw)
    # No axis_name: under jit with sharded inputs the batch mean is already global over devices.
    norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=self.bn_momentum, epsilon=self.bn_eps, dtype=self.dtype,
                             param_dtype=self.param_dtype)
    out = self.features * (4 if self.bottleneck else 1)

    residual = x
    if x.shape[-1] != out or tuple(self.strides) != (1, 1):
      residual = norm(name='bn_proj')(conv(out, 1, self.strides, name='conv_proj')(x))

    if self.bottleneck:
      y = nn.relu(norm(name='bn1')(conv(self.features, 1, name='conv1')(x)))
      y = nn.relu(norm(name='bn2')(conv(self.features, 3, self.strides, name='conv2')(y)))
      y = norm(name='bn3', scale_init=nn.initializers.zeros)(conv(out, 1, name='conv3')(y))
    else:
      y = nn.relu(norm(name='bn1')(conv(self.features, 3, self.strides, name='conv1')(x)))
      y = norm(name='bn2', scale_init=nn.initializers.zeros)(conv(out, 3, name='conv2')(y))
    return nn.relu(residual + y)


class ResNet(nn.Module):
  """ResNet-18/34/50 (He et al. 2016; v1.5) with BatchNorm; running stats in `batch_stats`.

  Train with `model.apply(variables, x, train=True, mutable=['batch_stats'])`; evaluation
  (`train=False`) normalises with the running statistics.

  Attributes:
    num_classes: head size; None returns the globally pooled features, which are also sown as
      `features` (`models.outputs`).
    num_layers: units per stage: (2, 2, 2, 2) ResNet-18, (3, 4, 6, 3) ResNet-34 and -50.
    bottleneck: bottleneck units (ResNet-50 and deeper) instead of basic ones.
    width: width of the root and of the first stage; doubles per stage.
    bn_momentum: running-average decay (torch's momentum 0.1 is 0.9 here).
    bn_eps: BatchNorm epsilon.
    dtype: compute dtype (e.g. 'bfloat16').
    param_dtype: parameter dtype.
    model_name: zoo name, informational.
  """
  num_classes: Optional[int]
  num_layers: Sequence[int] = (2, 2, 2, 2)
  bottleneck: bool = False
  width: int = 64
  bn_momentum: float = 0.9
  bn_eps: float = 1e-5
  dtype: Any = 'float32'
  param_dtype: Any = 'float32'
  model_name: Optional[str] = None

  @nn.compact
  def __call__(self, inputs: Array, *, train: bool = False) -> Array:
    layers.check_images(inputs, 'ResNet')
    layers.check_stage_depths(self.num_layers, 'ResNet')
    dtype, param_dtype = layers.as_dtype(self.dtype), layers.as_dtype(self.param_dtype)
    x = inputs.astype(dtype)
    x = nn.Conv(self.width, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], use_bias=False,
                kernel_init=_HE_FAN_OUT, dtype=dtype, param_dtype=param_dtype,
                name='conv_root')(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                     epsilon=self.bn_eps, dtype=dtype, param_dtype=param_dtype,
                     name='bn_root')(x)
    x = nn.relu(x)
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=[(1, 1), (1, 1)])  # -inf padding.

    unit_kwargs = dict(bottleneck=self.bottleneck, bn_momentum=self.bn_momentum,
                       bn_eps=self.bn_eps, dtype=dtype, param_dtype=param_dtype)
    for s, num_units in enumerate(self.num_layers, start=1):
      x = layers.ResNetStage(ResNetUnit, int(num_units), self.width * 2**(s - 1),
                             (1, 1) if s == 1 else (2, 2), unit_kwargs=unit_kwargs,
                             name=f'block{s}')(x, train)

    x = jnp.mean(x, axis=(1, 2))
    outputs.sow(self, outputs.FEATURES, x)
    if self.num_classes is None:
      return x
    x = nn.Dense(self.num_classes, dtype=dtype, param_dtype=param_dtype, name='head')(x)
    return x.astype(jnp.float32)
