"""What the library knows about one model family, as a record (`Family`).

A family (ViT with its hybrids, Swin, BiT, ResNet v1, the CIFAR CNN) is its Flax module, its zoo
entries, its default input normalisation, how to read its architecture from parameters, its timm /
Hugging Face key maps, its torch counterpart for parity checks, and how pre-trained parameters are
fitted to a fresh model. Each family's folder (`models/vit/`, `models/swin/`, ...) holds all of
its code, its converters included, and builds its record in `family.py`; `models.registry` lists
them. Training, the tools and conversion look a family up and use these fields; none of them
branches on a family's name.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import ml_collections
import numpy as np

from vit_jax.checkpoint import pretrained

FlatParams = dict[str, np.ndarray]
Config = dict[str, Any]
# (a checkpoint's parameters, nested; the model's initial parameters; the model; its input size
# (h, w); keyword options of `checkpoint.fit_pretrained`, posemb_resize and
# resample_patch_embedding, which the family may use) -> the parameters fitted to the model
# (fresh head, resized embeddings).
FitPretrained = Callable[..., Any]


@dataclasses.dataclass(frozen=True)
class KeyMap:
  """One family's flat parameters <-> a torch library's state dict (NumPy values both sides)."""
  matches: Callable[[Sequence[str]], bool]  # on state-dict keys
  # (state dict, attention heads when known, the library's config when it has one) -> ours.
  from_state_dict: Callable[[Mapping[str, np.ndarray], int | None, Mapping[str, Any] | None],
                            FlatParams]
  to_state_dict: Callable[[FlatParams], FlatParams]
  gelu_approximate: bool | None = None  # the GELU form the family's files imply; None: unknown
  # Suffixes of state-dict entries that are buffers the library rebuilds (dropped on loading).
  buffers: tuple[str, ...] = ()
  # The library's architecture names -> zoo names (a timm repo's `config.json` names its model
  # by timm's name; its state dict does not record the attention heads, the zoo entry does).
  names: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Family:
  """What the library knows about one model family."""
  name: str  # as `models.MODEL_FAMILIES` gives it
  module: type[nn.Module]
  configs: Mapping[str, ml_collections.ConfigDict]  # its zoo entries, by name
  normalization: str  # default pixel normalisation (`data.image_io.normalize`)
  fit_pretrained: FitPretrained
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
  global_attention: bool = False  # attention maps over the whole image (`tools.visualize`)
  # Config fields that are dicts handed to a submodule: field -> that submodule's class and the
  # fields the parent sets itself (so they are not the dict's).
  nested: Mapping[str, tuple[type[nn.Module], frozenset[str]]] = dataclasses.field(
      default_factory=dict)

  @property
  def model_names(self) -> tuple[str, ...]:
    """The zoo entries of this family."""
    return tuple(self.configs)

  def build(self, config: Mapping[str, Any], overrides: Mapping[str, Any] | None = None,
            **fields: Any) -> nn.Module:
    """The module for `config` (with `num_classes`), `overrides` merged into its dict fields."""
    return self.module(**{**merge(config, overrides or {}), **fields})


def field_defaults(cls: type[nn.Module], exclude: frozenset[str] = frozenset()
                   ) -> dict[str, tuple[Any, Any]]:
  """The fields of module class `cls` that have defaults: name -> (default, annotation)."""
  try:
    hints = typing.get_type_hints(cls)
  except (NameError, TypeError):  # An annotation that does not resolve: typed by its value.
    hints = {}
  found = {}
  for field in dataclasses.fields(cls):
    if field.name in ('parent', 'name') or field.name in exclude:
      continue
    if field.default is not dataclasses.MISSING:
      found[field.name] = (field.default, hints.get(field.name, Any))
  return found


def merge(config: Mapping[str, Any], overrides: Mapping[str, Any]) -> Config:
  """`config` with `overrides` merged in, one level deep into dict fields."""
  merged = dict(config)
  for key, value in overrides.items():
    if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
      merged[key] = {**merged[key], **value}
    else:
      merged[key] = value
  return merged


# ---------------------------------------------------------------------------------------------
# Record fields several families share.


def head_fields(flat: FlatParams) -> Config:
  """The head size a checkpoint's parameters give a zoo model."""
  return {'num_classes': pretrained.num_classes(flat)}


def pretraining_size(flat: FlatParams, model: nn.Module) -> tuple[int, int]:
  """Convolutional nets take any size; 224 is their pre-training one."""
  return 224, 224


def fit_original(params: Mapping[str, Any], init_params: Mapping[str, Any], model: nn.Module,
                 image_size: tuple[int, int], **options: Any) -> Any:
  """`checkpoint.fit_pretrained`, the original library's fit, with the model's patch grid."""
  grid = None
  if hasattr(model, 'patches') and getattr(model, 'resnet', None) is None:
    ph, pw = model.patches['size']
    grid = (image_size[0] // ph, image_size[1] // pw)
  return pretrained.fit_pretrained(
      params, init_params=init_params,
      model_config={'representation_size': getattr(model, 'representation_size', None)},
      grid=grid, **options)
