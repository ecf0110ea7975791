"""Model families as records: everything the tools need to know about a family, in one place.

A family (ViT with its hybrids, BiT, ResNet v1, the CIFAR CNN, Swin) is its module class, its zoo
entries, its default input normalisation, its `.npz` layouts, how to read its architecture from
parameters, its timm / Hugging Face key maps, its torch counterpart for parity checks, and its
pre-trained loader. Training, the tools and conversion look a family up (`of_model`,
`of_params`, `by_name`) and use these fields; none of them branches on a family's name. Adding a
family is adding one `Family` record to `FAMILIES` (and its zoo module to `vit_jax.zoo`).
"""

from __future__ import annotations

import dataclasses
from types import ModuleType
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import numpy as np

from vit_jax import models_cnn
from vit_jax import models_resnet
from vit_jax import models_resnet_v1
from vit_jax import zoo
from vit_jax.checkpoint import architecture
from vit_jax.checkpoint import bit_npz
from vit_jax.checkpoint import hf_keys
from vit_jax.checkpoint import pretrained
from vit_jax.checkpoint import swin_keys
from vit_jax.checkpoint import timm_keys
from vit_jax.checkpoint import torch_models
from vit_jax.checkpoint import tree
from vit_jax.checkpoint.errors import CheckpointError
from vit_jax.checkpoint.layout import Layout
from vit_jax.checkpoint.layout import VIT_LAYOUT
from vit_jax.models_swin import SwinTransformer
from vit_jax.models_vit import VisionTransformer

FlatParams = dict[str, np.ndarray]
Config = dict[str, Any]
# (checkpoint path, the model's initial parameters, the model, its input (h, w, c), keyword
# options of `pretrained.load_pretrained` that the family may use) -> params.
PretrainedLoader = Callable[..., Any]


@dataclasses.dataclass(frozen=True)
class KeyMap:
  """One family's flat parameters <-> a torch library's state dict (NumPy values both sides)."""
  matches: Callable[[Sequence[str]], bool]  # on state-dict keys
  # (state dict, attention heads when known, the library's config when it has one) -> ours.
  from_state_dict: Callable[[Mapping[str, np.ndarray], int | None, Mapping[str, Any] | None],
                            FlatParams]
  to_state_dict: Callable[[FlatParams], FlatParams]
  gelu_approximate: bool | None = None  # the GELU form the family's files imply; None: unknown


@dataclasses.dataclass(frozen=True)
class Family:
  """What the library knows about one model family."""
  name: str  # as `zoo.MODEL_FAMILIES` names it
  module: type[nn.Module]
  zoo_modules: tuple[ModuleType, ...]
  normalization: str  # default pixel normalisation (`image_io.normalize`)
  layouts: tuple[Layout, ...]  # `.npz` layouts its checkpoints come in
  load_pretrained: PretrainedLoader
  # The default resolution of a model of this family whose parameters are `flat`.
  image_size: Callable[[FlatParams, nn.Module], tuple[int, int]]
  # Fields a zoo model takes from the checkpoint it is loaded with (head size, ...).
  fields_from_params: Callable[[FlatParams], Config]
  # Reading the architecture from parameters, for families whose parameters pin it down.
  matches_params: Callable[[FlatParams], bool] | None = None
  config_from_params: Callable[[FlatParams], Config] | None = None
  timm: KeyMap | None = None
  hf: KeyMap | None = None
  # (config with num_classes, image_size=, gelu_approximate=) -> the torch model (timm).
  torch_model: Callable[..., Any] | None = None
  # (config, gelu_approximate) -> overrides that make our model compute what `torch_model` does.
  torch_conventions: Callable[[Config, bool], Config] = lambda config, gelu: {}
  global_attention: bool = False  # attention maps over the whole image (`visualize`)

  @property
  def model_names(self) -> tuple[str, ...]:
    """The zoo entries of this family."""
    return tuple(name for module in self.zoo_modules for name in module.CONFIGS)

  def build(self, config: Mapping[str, Any], overrides: Mapping[str, Any] | None = None,
            **fields: Any) -> nn.Module:
    """The module for `config` (with `num_classes`), `overrides` merged into its dict fields."""
    merged = dict(config)
    for key, value in (overrides or {}).items():
      if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
        merged[key] = {**merged[key], **value}
      else:
        merged[key] = value
    return self.module(**{**merged, **fields})


def _vit_fields(flat: FlatParams) -> Config:
  config = architecture.vit_config_from_params(flat)
  fields = {'representation_size': config['representation_size'],
            'num_classes': config['num_classes']}
  if config.get('distilled'):
    fields['distilled'] = True
  return fields


def _head_fields(flat: FlatParams) -> Config:
  return {'num_classes': architecture.num_classes(flat)}


def _vit_image_size(flat: FlatParams, model: nn.Module) -> tuple[int, int]:
  return architecture.vit_image_size(flat, architecture.vit_config_from_params(flat))


def _swin_image_size(flat: FlatParams, model: nn.Module) -> tuple[int, int]:
  side = architecture.swin_image_size({'window_size': model.window_size,
                                       'patch_size': model.patch_size, 'depths': model.depths})
  return side, side


def _pretraining_size(flat: FlatParams, model: nn.Module) -> tuple[int, int]:
  return 224, 224  # Convolutional nets take any size; 224 is their pre-training one.


def _load_pretrained_npz(path: str, init_params: Mapping[str, Any], model: nn.Module,
                         image_shape: tuple[int, int, int], **options: Any) -> Any:
  grid = None
  if hasattr(model, 'patches') and getattr(model, 'resnet', None) is None:
    ph, pw = model.patches['size']
    grid = (image_shape[0] // ph, image_shape[1] // pw)
  return pretrained.load_pretrained(
      pretrained_path=path, init_params=init_params,
      model_config={'representation_size': getattr(model, 'representation_size', None)},
      grid=grid, **options)


def _load_pretrained_swin(path: str, init_params: Mapping[str, Any], model: nn.Module,
                          image_shape: tuple[int, int, int], **options: Any) -> Any:
  # Official/timm weights in any layout; bias tables resized to the model's windows.
  return pretrained.load_pretrained_swin(path, init_params)


def _vit_from_timm(state: Mapping[str, np.ndarray], num_heads: int | None,
                   config: Mapping[str, Any] | None) -> FlatParams:
  hidden = np.shape(state['patch_embed.proj.weight'])[0]
  return timm_keys.from_timm(state, num_heads or timm_keys.default_num_heads(hidden))


def _vit_from_hf(state: Mapping[str, np.ndarray], num_heads: int | None,
                 config: Mapping[str, Any] | None) -> FlatParams:
  config = dict(config or {})
  if num_heads:  # Given explicitly: overrides the config's.
    config['num_attention_heads'] = num_heads
  return hf_keys.from_hf(state, config)


def _vit_torch_conventions(config: Config, gelu_approximate: bool) -> Config:
  # Our hybrids run with timm's epsilons, so that a comparison measures the conversion rather
  # than the two conventions (which move logits by about 1e-4).
  overrides: Config = {'transformer': {'gelu_approximate': gelu_approximate}}
  if config.get('resnet'):
    overrides['resnet'] = torch_models.TIMM_HYBRID_EPS
  return overrides


VIT = Family(
    name='vit', module=VisionTransformer, zoo_modules=(zoo.vit, zoo.hybrid),
    normalization='minus_one_one', layouts=(VIT_LAYOUT,),
    load_pretrained=_load_pretrained_npz, image_size=_vit_image_size,
    fields_from_params=_vit_fields,
    matches_params=lambda flat: architecture.is_vit(tree.unstack_encoder(dict(flat))),
    config_from_params=architecture.vit_config_from_params,
    timm=KeyMap(timm_keys.is_timm_vit, _vit_from_timm, timm_keys.to_timm),
    hf=KeyMap(hf_keys.is_hf_vit, _vit_from_hf, lambda flat: hf_keys.to_hf(flat)[0]),
    torch_model=lambda config, *, image_size, gelu_approximate: torch_models.timm_vit(
        config, image_size=image_size, gelu_approximate=gelu_approximate),
    torch_conventions=_vit_torch_conventions,
    global_attention=True,
)

SWIN = Family(
    name='swin', module=SwinTransformer, zoo_modules=(zoo.swin,),
    normalization='imagenet', layouts=(VIT_LAYOUT, swin_keys.STATE_DICT_NPZ_LAYOUT),
    load_pretrained=_load_pretrained_swin, image_size=_swin_image_size,
    fields_from_params=_head_fields,
    matches_params=architecture.is_swin,
    config_from_params=architecture.swin_config_from_params,
    # Swin uses the exact GELU.
    timm=KeyMap(swin_keys.has_bias_tables,
                lambda state, num_heads, config: tree.flatten(swin_keys.from_state_dict(state)),
                lambda flat: swin_keys.to_state_dict(tree.unflatten(flat)),
                gelu_approximate=False),
    torch_model=lambda config, *, image_size=None, gelu_approximate=False: (
        torch_models.timm_swin(config, image_size=image_size)),
)

BIT = Family(
    name='bit', module=models_resnet.ResNetV2, zoo_modules=(zoo.resnet,),
    normalization='zero_one', layouts=(bit_npz.LAYOUT,),
    load_pretrained=_load_pretrained_npz, image_size=_pretraining_size,
    fields_from_params=_head_fields,
)

RESNET = Family(
    name='resnet', module=models_resnet_v1.ResNet, zoo_modules=(zoo.resnet_v1,),
    normalization='imagenet', layouts=(VIT_LAYOUT,),
    load_pretrained=_load_pretrained_npz, image_size=_pretraining_size,
    fields_from_params=_head_fields,
)

CNN = Family(
    name='cnn', module=models_cnn.CifarCNN, zoo_modules=(zoo.cnn,),
    normalization='imagenet', layouts=(VIT_LAYOUT,),
    load_pretrained=_load_pretrained_npz, image_size=_pretraining_size,
    fields_from_params=_head_fields,
)

FAMILIES: dict[str, Family] = {f.name: f for f in (VIT, SWIN, BIT, RESNET, CNN)}


def by_name(name: str) -> Family:
  """The family `name` (as `zoo.MODEL_FAMILIES` and `LoadedModel.family` give it)."""
  if name not in FAMILIES:
    raise KeyError(f'Unknown model family {name!r}; known: {", ".join(FAMILIES)}')
  return FAMILIES[name]


def of_model(model_name: str) -> Family:
  """The family of zoo model `model_name`; KeyError naming the known models otherwise."""
  if model_name not in zoo.MODEL_FAMILIES:
    raise KeyError(f'Unknown model {model_name!r}; known models: '
                   f'{", ".join(sorted(zoo.MODEL_CONFIGS))}')
  return by_name(zoo.MODEL_FAMILIES[model_name])


def of_params(flat: Mapping[str, Any]) -> Family:
  """The family whose architecture flat parameters (our paths) describe.

  Raises:
    CheckpointError: no family reads its architecture from these parameters.
  """
  for family in FAMILIES.values():
    if family.matches_params is not None and family.matches_params(flat):
      return family
  readable = [f.name for f in FAMILIES.values() if f.matches_params is not None]
  raise CheckpointError(
      'Cannot infer the model from these parameters (only the architectures of the '
      f'{", ".join(readable)} families can be read from parameter shapes); pass the zoo model '
      'name')


def of_state_dict(keys: Sequence[str], library: str) -> Family:
  """The family whose `library` ('timm' or 'hf') key map reads a state dict with these keys.

  Raises:
    CheckpointError: no family's map accepts them.
  """
  for family in FAMILIES.values():
    key_map = getattr(family, library)
    if key_map is not None and key_map.matches(keys):
      return family
  readable = [f.name for f in FAMILIES.values() if getattr(f, library) is not None]
  raise CheckpointError(f'Not a {library} state dict of the {", ".join(readable)} families')

