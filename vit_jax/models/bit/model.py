"""The weight-standardized ResNets of the ViT paper family as Flax linen modules.

* `hybrid_root_and_stages`: the ResNet stem of the hybrid R+ViT models, built inside
  `VisionTransformer` so that its parameters sit at the top level of the ViT tree, exactly as in
  the released hybrid `.npz` files (post-activation units, TF 'SAME' padding).
* `ResNetV2`: BiT (Kolesnikov et al. 2020), pre-activation units with weight standardization and
  GroupNorm. `checkpoint` maps the released TF-style `resnet/...` keys onto its parameters.

Both take NHWC images and `train=` like `VisionTransformer`; `num_classes=None` returns the pooled
features. Submodule names are explicit wherever a checkpoint depends on them. The classic
BatchNorm ResNet is in `models_resnet_v1`, the CIFAR CNN baseline in `models_cnn`.
"""

from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

from vit_jax.models import layers
from vit_jax.models import outputs

Array = jax.Array
Dtype = Any
Padding = str | Sequence[tuple[int, int]]


def standardize_weight(kernel: Array, *, eps: float, eps_in_sqrt: bool) -> Array:
  """Weight standardization (Qiao et al. 2019) of an HWIO kernel, per output channel.

  Args:
    kernel: (H, W, I, O) convolution kernel.
    eps: the stabiliser.
    eps_in_sqrt: True gives `(w - mean) / sqrt(var + eps)` (BiT, timm); False gives
      `(w - mean) / (std + eps)` (the original hybrid code, which used `jnp.std`).

  Returns:
    The standardized kernel in at least float32: standardizing a bfloat16 kernel in bfloat16
    would lose most of its mantissa to the mean subtraction.
  """
  kernel = kernel.astype(jnp.promote_types(kernel.dtype, jnp.float32))
  kernel = kernel - jnp.mean(kernel, axis=(0, 1, 2), keepdims=True)
  var = jnp.mean(jnp.square(kernel), axis=(0, 1, 2), keepdims=True)
  if eps_in_sqrt:
    return kernel * lax.rsqrt(var + eps)
  return kernel / (jnp.sqrt(var) + eps)


class StdConv(nn.Module):
  """Bias-free convolution with a weight-standardized kernel (stored raw as `kernel`, HWIO).

  `padding` is 'SAME' (TensorFlow's: the extra row/column goes after, so stride-2 padding is
  asymmetric), 'VALID', or explicit ((top, bottom), (left, right)).
  """
  features: int
  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  padding: Padding = 'SAME'
  eps: float = 1e-5
  eps_in_sqrt: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (*self.kernel_size, x.shape[-1], self.features), self.param_dtype)
    kernel = standardize_weight(kernel, eps=self.eps, eps_in_sqrt=self.eps_in_sqrt)
    return lax.conv_general_dilated(
        x.astype(self.dtype), kernel.astype(self.dtype), window_strides=self.strides,
        padding=self.padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def _group_norm(epsilon: float, dtype: Dtype, param_dtype: Dtype, **kwargs: Any) -> nn.GroupNorm:
  # Two-pass variance: the one-pass E[x^2] - E[x]^2 loses precision on post-ReLU activations,
  # whose means are large relative to their spread.
  return nn.GroupNorm(num_groups=32, epsilon=epsilon, dtype=dtype, param_dtype=param_dtype,
                      use_fast_variance=False, **kwargs)


# ---------------------------------------------------------------------------------------------
# The hybrid R+ViT stem (vit_jax's original hybrid releases).


class HybridUnit(nn.Module):
  """Post-activation bottleneck: conv→GN→ReLU twice, conv→GN, add, ReLU; stride on the 3x3.

  `gn3` starts at scale zero, so each unit starts as (projected) identity.
  """
  features: int
  strides: tuple[int, int] = (1, 1)
  conv_eps: float = 1e-5
  conv_eps_in_sqrt: bool = False
  gn_eps: float = 1e-6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    conv = functools.partial(StdConv, eps=self.conv_eps, eps_in_sqrt=self.conv_eps_in_sqrt,
                             dtype=self.dtype, param_dtype=self.param_dtype)
    norm = functools.partial(_group_norm, self.gn_eps, self.dtype, self.param_dtype)
    out = self.features * 4

    residual = x
    if x.shape[-1] != out or tuple(self.strides) != (1, 1):
      residual = conv(out, (1, 1), self.strides, name='conv_proj')(residual)
      residual = norm(name='gn_proj')(residual)

    y = nn.relu(norm(name='gn1')(conv(self.features, (1, 1), name='conv1')(x)))
    y = nn.relu(norm(name='gn2')(conv(self.features, (3, 3), self.strides, name='conv2')(y)))
    y = conv(out, (1, 1), name='conv3')(y)
    y = norm(name='gn3', scale_init=nn.initializers.zeros)(y)
    return nn.relu(residual + y)


def hybrid_root_and_stages(x: Array, *, num_layers: Sequence[int], width_factor: float,
                           dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
                           conv_eps: float = 1e-5, conv_eps_in_sqrt: bool = False,
                           gn_eps: float = 1e-6) -> Array:
  """The ResNet part of a hybrid R+ViT; call it inside the parent's `nn.compact` method.

  Modules created here attach to the calling module, so their parameters (`conv_root`, `gn_root`,
  `block{s}/unit{u}/...`) sit at the top level of the ViT tree, as in the hybrid `.npz` files.

  Args:
    x: NHWC images.
    num_layers: units per stage, e.g. (3, 4, 9) for R50+ViT-B/16; () keeps only the root.
    width_factor: multiplies the root width 64; stage s has width 64 * 2**(s-1) * width_factor.
    dtype: compute dtype.
    param_dtype: parameter dtype.
    conv_eps: weight-standardization epsilon (the original: 1e-5 added to the std).
    conv_eps_in_sqrt: add `conv_eps` to the variance under the square root instead (timm).
    gn_eps: GroupNorm epsilon (the original: flax's default 1e-6; timm: 1e-5).

  Returns:
    The feature map: stride 4 after the root, then x2 per stage after the first.
  """
  layers.check_images(x, 'The hybrid ResNet stem')
  layers.check_stage_depths(num_layers, 'The hybrid ResNet stem', allow_empty=True)
  width = int(64 * width_factor)
  conv_kwargs = dict(eps=conv_eps, eps_in_sqrt=conv_eps_in_sqrt, dtype=dtype,
                     param_dtype=param_dtype)
  x = StdConv(width, (7, 7), (2, 2), name='conv_root', **conv_kwargs)(x)
  x = nn.relu(_group_norm(gn_eps, dtype, param_dtype, name='gn_root')(x))
  # flax pads max-pooling with -inf, like TensorFlow's 'SAME'.
  x = nn.max_pool(x, (3, 3), strides=(2, 2), padding='SAME')

  unit_kwargs = dict(conv_eps=conv_eps, conv_eps_in_sqrt=conv_eps_in_sqrt, gn_eps=gn_eps,
                     dtype=dtype, param_dtype=param_dtype)
  for s, num_units in enumerate(num_layers, start=1):
    x = layers.ResNetStage(HybridUnit, int(num_units), width * 2**(s - 1),
                           (1, 1) if s == 1 else (2, 2), unit_kwargs=unit_kwargs,
                           name=f'block{s}')(x)
  return x


# ---------------------------------------------------------------------------------------------
# BiT ResNetV2.


class PreActUnit(nn.Module):
  """BiT's pre-activation bottleneck: (GN→ReLU→conv) x3 with the stride on the 3x3 conv.

  The projection shortcut reads the pre-activated input, as in the released models. The 3x3 conv
  pads one pixel on every side (BiT's PyTorch code, big_vision and timm), not TF 'SAME'.
  """
  features: int
  strides: tuple[int, int] = (1, 1)
  conv_eps: float = 1e-10
  gn_eps: float = 1e-5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    conv = functools.partial(StdConv, eps=self.conv_eps, eps_in_sqrt=True, dtype=self.dtype,
                             param_dtype=self.param_dtype)
    norm = functools.partial(_group_norm, self.gn_eps, self.dtype, self.param_dtype)
    out = self.features * 4

    residual = x
    x = nn.relu(norm(name='gn1')(x))
    if x.shape[-1] != out or tuple(self.strides) != (1, 1):
      residual = conv(out, (1, 1), self.strides, 'VALID', name='conv_proj')(x)
    x = conv(self.features, (1, 1), padding='VALID', name='conv1')(x)
    x = nn.relu(norm(name='gn2')(x))
    x = conv(self.features, (3, 3), self.strides, ((1, 1), (1, 1)), name='conv2')(x)
    x = nn.relu(norm(name='gn3')(x))
    x = conv(out, (1, 1), padding='VALID', name='conv3')(x)
    return x + residual


class ResNetV2(nn.Module):
  """BiT ResNetV2: R50x1 is `num_layers=(3, 4, 6, 3), width_factor=1`.

  Parameters: `conv_root`, `block{s}/unit{NN}/{gn1,conv1,gn2,conv2,gn3,conv3,conv_proj}` (units
  zero-padded, as in the BiT files), `gn_pre_head`, and `head` (Dense, zero-initialised).

  Attributes:
    num_classes: head size; None returns the globally pooled features, which are also sown as
      `features` (`models.outputs`).
    num_layers: units per stage: (3, 4, 6, 3) R50, (3, 4, 23, 3) R101, (3, 8, 36, 3) R152.
    width_factor: multiplies every width (x1 to x4 in the releases).
    conv_eps: weight standardization `(w - m) / sqrt(var + conv_eps)`: 1e-10 in BiT, 1e-8 in timm.
    gn_eps: GroupNorm epsilon.
    head_zero_init: zero head kernel, as for BiT fine-tuning; False uses LeCun normal.
    dtype: compute dtype (e.g. 'bfloat16').
    param_dtype: parameter dtype.
    model_name: zoo name, informational.
  """
  num_classes: Optional[int]
  num_layers: Sequence[int] = (3, 4, 6, 3)
  width_factor: float = 1
  conv_eps: float = 1e-10
  gn_eps: float = 1e-5
  head_zero_init: bool = True
  dtype: Any = 'float32'
  param_dtype: Any = 'float32'
  model_name: Optional[str] = None

  @nn.compact
  def __call__(self, inputs: Array, *, train: bool = False) -> Array:
    del train  # No dropout or batch statistics; kept for the zoo's common signature.
    layers.check_images(inputs, 'ResNetV2')
    layers.check_stage_depths(self.num_layers, 'ResNetV2')
    dtype, param_dtype = layers.as_dtype(self.dtype), layers.as_dtype(self.param_dtype)
    width = int(64 * self.width_factor)
    x = inputs.astype(dtype)

    # Root: explicit zero padding, then VALID conv and pool. Zeros (not -inf) before the pool
    # matter: the root has no ReLU, so its outputs can be negative.
    x = jnp.pad(x, ((0, 0), (3, 3), (3, 3), (0, 0)))
    x = StdConv(width, (7, 7), (2, 2), 'VALID', eps=self.conv_eps, eps_in_sqrt=True,
                dtype=dtype, param_dtype=param_dtype, name='conv_root')(x)
    x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding='VALID')

    unit_kwargs = dict(conv_eps=self.conv_eps, gn_eps=self.gn_eps, dtype=dtype,
                       param_dtype=param_dtype)
    for s, num_units in enumerate(self.num_layers, start=1):
      x = layers.ResNetStage(PreActUnit, int(num_units), width * 2**(s - 1),
                             (1, 1) if s == 1 else (2, 2), unit_kwargs=unit_kwargs,
                             zero_pad_names=True, name=f'block{s}')(x)

    x = nn.relu(_group_norm(self.gn_eps, dtype, param_dtype, name='gn_pre_head')(x))
    x = jnp.mean(x, axis=(1, 2))
    outputs.sow(self, outputs.FEATURES, x)
    if self.num_classes is None:
      return x
    kernel_init = nn.initializers.zeros if self.head_zero_init else nn.initializers.lecun_normal()
    x = nn.Dense(self.num_classes, dtype=dtype, param_dtype=param_dtype, kernel_init=kernel_init,
                 name='head')(x)
    return x.astype(jnp.float32)
