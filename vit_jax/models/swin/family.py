"""The Swin family's record."""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn

from vit_jax.checkpoint import tree
from vit_jax.models import family
from vit_jax.models.swin import architecture
from vit_jax.models.swin import pretrained
from vit_jax.models.swin import timm_keys
from vit_jax.models.swin import torch_model
from vit_jax.models.swin import zoo
from vit_jax.models.swin.model import SwinTransformer


def _image_size(flat: family.FlatParams, model: nn.Module) -> tuple[int, int]:
  side = architecture.image_size({'window_size': model.window_size,
                                  'patch_size': model.patch_size, 'depths': model.depths})
  return side, side


def _fit_pretrained(params: Mapping[str, Any], init_params: Mapping[str, Any],
                    model: nn.Module, image_size: tuple[int, int], **options: Any) -> Any:
  # Bias tables resized to the model's windows; no position embedding or patch-size options.
  return pretrained.fit_pretrained(params, init_params)


FAMILY = family.Family(
    name='swin', module=SwinTransformer, configs=zoo.CONFIGS,
    normalization='imagenet',
    fit_pretrained=_fit_pretrained, image_size=_image_size,
    fields_from_params=family.head_fields,
    matches_params=architecture.matches,
    config_from_params=architecture.config_from_params,
    # Swin uses the exact GELU; the official release stores buffers that timm rebuilds.
    timm=family.KeyMap(timm_keys.has_bias_tables,
                       lambda state, num_heads, config: tree.flatten(
                           timm_keys.from_state_dict(state)),
                       lambda flat: timm_keys.to_state_dict(tree.unflatten(flat)),
                       gelu_approximate=False, buffers=timm_keys.BUFFERS,
                       names=timm_keys.TIMM_NAMES),
    torch_model=lambda config, *, image_size=None, gelu_approximate=False: (
        torch_model.timm_swin(config, image_size=image_size)),
)
