"""The Swin family's record."""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn

from vit_jax.checkpoint import architecture
from vit_jax.checkpoint import pretrained
from vit_jax.checkpoint import swin_keys
from vit_jax.checkpoint import torch_models
from vit_jax.checkpoint import tree
from vit_jax.models import family
from vit_jax.models.swin import zoo
from vit_jax.models.swin.model import SwinTransformer


def _image_size(flat: family.FlatParams, model: nn.Module) -> tuple[int, int]:
  side = architecture.swin_image_size({'window_size': model.window_size,
                                       'patch_size': model.patch_size, 'depths': model.depths})
  return side, side


def _load_pretrained(params: Mapping[str, Any], init_params: Mapping[str, Any],
                     model: nn.Module, image_shape: tuple[int, int, int],
                     **options: Any) -> Any:
  # Bias tables resized to the model's windows.
  return pretrained.load_pretrained_swin(params, init_params)


FAMILY = family.Family(
    name='swin', module=SwinTransformer, configs=zoo.CONFIGS,
    normalization='imagenet',
    load_pretrained=_load_pretrained, image_size=_image_size,
    fields_from_params=family.head_fields,
    matches_params=architecture.is_swin,
    config_from_params=architecture.swin_config_from_params,
    # Swin uses the exact GELU.
    timm=family.KeyMap(swin_keys.has_bias_tables,
                       lambda state, num_heads, config: tree.flatten(
                           swin_keys.from_state_dict(state)),
                       lambda flat: swin_keys.to_state_dict(tree.unflatten(flat)),
                       gelu_approximate=False),
    torch_model=lambda config, *, image_size=None, gelu_approximate=False: (
        torch_models.timm_swin(config, image_size=image_size)),
)
