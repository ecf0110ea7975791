"""The ViT family's record: plain ViTs and the ResNet+ViT hybrids."""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import numpy as np

from vit_jax.models import family
from vit_jax.models.vit import architecture
from vit_jax.models.vit import hf_keys
from vit_jax.models.vit import timm_keys
from vit_jax.models.vit import torch_model
from vit_jax.models.vit import zoo
from vit_jax.models.vit import zoo_hybrid
from vit_jax.models.vit.model import Encoder
from vit_jax.models.vit.model import VisionTransformer


def _fields(flat: family.FlatParams) -> family.Config:
  config = architecture.config_from_params(flat)
  fields = {'representation_size': config['representation_size'],
            'num_classes': config['num_classes']}
  if config.get('distilled'):
    fields['distilled'] = True
  return fields


def _image_size(flat: family.FlatParams, model: nn.Module) -> tuple[int, int]:
  return architecture.image_size(flat, architecture.config_from_params(flat))


def _from_timm(state: Mapping[str, np.ndarray], num_heads: int | None,
               config: Mapping[str, Any] | None) -> family.FlatParams:
  hidden = np.shape(state['patch_embed.proj.weight'])[0]
  return timm_keys.from_timm(state, num_heads or timm_keys.default_num_heads(hidden))


def _from_hf(state: Mapping[str, np.ndarray], num_heads: int | None,
             config: Mapping[str, Any] | None) -> family.FlatParams:
  config = dict(config or {})
  if num_heads:  # Given explicitly: overrides the config's.
    config['num_attention_heads'] = num_heads
  return hf_keys.from_hf(state, config)


def _torch_conventions(config: family.Config, gelu_approximate: bool) -> family.Config:
  # Our hybrids run with timm's epsilons, so that a comparison measures the conversion rather
  # than the two conventions (which move logits by about 1e-4).
  overrides: family.Config = {'transformer': {'gelu_approximate': gelu_approximate}}
  if config.get('resnet'):
    overrides['resnet'] = torch_model.TIMM_HYBRID_EPS
  return overrides


FAMILY = family.Family(
    name='vit', module=VisionTransformer, configs={**zoo.CONFIGS, **zoo_hybrid.CONFIGS},
    normalization='minus_one_one',
    fit_pretrained=family.fit_original, image_size=_image_size,
    fields_from_params=_fields,
    matches_params=architecture.matches,
    config_from_params=architecture.config_from_params,
    # timm's ViTs run the exact GELU.
    timm=family.KeyMap(timm_keys.is_timm_vit, _from_timm, timm_keys.to_timm,
                       gelu_approximate=False, names=timm_keys.TIMM_NAMES),
    hf=family.KeyMap(hf_keys.is_hf_vit, _from_hf, lambda flat: hf_keys.to_hf(flat)[0]),
    torch_model=lambda config, *, image_size, gelu_approximate: torch_model.timm_vit(
        config, image_size=image_size, gelu_approximate=gelu_approximate),
    torch_conventions=_torch_conventions,
    global_attention=True,
    # VisionTransformer sets these Encoder fields from its own.
    nested={'transformer': (Encoder, frozenset({'posemb', 'sow_weights', 'dtype',
                                                'param_dtype'}))},
)
