"""timm's counterpart of our ViTs and hybrids, for parity checks and benchmarks.

torch and timm are imported inside the functions (through `models.timm_import`): importing this
module needs neither.
"""

from __future__ import annotations

from typing import Any, Mapping

from vit_jax.checkpoint.errors import ConversionError
from vit_jax.models import timm_import

# timm's hybrid ResNet backbones exist only as registered models with these stage layouts (x1).
_TIMM_HYBRIDS = {(): 'vit_tiny_r_s16_p8_224', (2, 2, 2, 2): 'vit_small_r26_s32_224',
                 (3, 4, 9): 'vit_base_r50_s16_224', (3, 4, 6, 3): 'vit_large_r50_s32_224'}
# The epsilons of timm's port of the hybrids, for parity with it: `(w - m) / sqrt(var + 1e-8)` and
# GroupNorm 1e-5 (the original uses `(w - m) / (std + 1e-5)` and GroupNorm 1e-6). Pass to our
# hybrid as `resnet={..., **TIMM_HYBRID_EPS}`.
TIMM_HYBRID_EPS = {'conv_eps': 1e-8, 'conv_eps_in_sqrt': True, 'gn_eps': 1e-5}


def timm_vit(config: Mapping[str, Any], *, gelu_approximate: bool = True,
             image_size: int = 224) -> Any:
  """timm's VisionTransformer with the architecture of our ViT/hybrid `config`.

  Args:
    config: `VisionTransformer` fields plus `num_classes` (as `architecture` reads them).
    gelu_approximate: tanh GELU (the original library) or exact erf (timm's default).
    image_size: input side in pixels.
  """
  timm = timm_import.import_timm()
  transformer = config['transformer']
  pools = {'token': 'token', 'gap': 'avg', 'map': 'map'}
  if config['classifier'] not in pools:
    raise ConversionError(f"timm has no counterpart of classifier {config['classifier']!r}")
  if config.get('representation_size'):
    raise ConversionError('timm ViTs have no representation layer (pre_logits)')
  kwargs = dict(
      img_size=image_size, patch_size=config['patches']['size'][0],
      embed_dim=config['hidden_size'], depth=transformer['num_layers'],
      num_heads=transformer['num_heads'],
      mlp_ratio=transformer['mlp_dim'] / config['hidden_size'],
      num_classes=config.get('num_classes') or 0, class_token=config['classifier'] == 'token',
      global_pool=pools[config['classifier']], fc_norm=False,
      act_layer='gelu_tanh' if gelu_approximate else 'gelu',
      reg_tokens=config.get('reg_tokens') or 0, init_values=transformer.get('init_values'),
      qk_norm=bool(transformer.get('qk_norm')))
  resnet = config.get('resnet')
  if config.get('distilled'):
    if resnet:
      raise ConversionError('timm has no distilled hybrid ViT')
    return timm.models.deit.VisionTransformerDistilled(**kwargs).eval()
  if not resnet:
    return timm.models.vision_transformer.VisionTransformer(**kwargs).eval()
  name = _TIMM_HYBRIDS.get(tuple(resnet['num_layers']))
  if name is None or resnet['width_factor'] != 1:
    raise ConversionError(f"timm has no hybrid with ResNet stages {resnet['num_layers']} x"
                          f"{resnet['width_factor']}")
  return timm.create_model(name, pretrained=False, **kwargs).eval()
