"""The registry: every family and every zoo entry, and the lookups the rest of the library uses.

A family is registered by adding its record (`models/<family>/family.py`) to `FAMILIES`. Zoo
names, the model class of a name, the family of a file's parameters or state dict: all are read
from the records, so nothing else names a family.
"""

from __future__ import annotations

import copy
import typing
from typing import Any, Iterator, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vit_jax.checkpoint.errors import CheckpointError
from vit_jax.models import family as family_lib
from vit_jax.models.bit import family as bit
from vit_jax.models.cnn import family as cnn
from vit_jax.models.resnet import family as resnet
from vit_jax.models.swin import family as swin
from vit_jax.models.vit import family as vit

Family = family_lib.Family

FAMILIES: dict[str, Family] = {f.name: f for f in (
    vit.FAMILY, swin.FAMILY, bit.FAMILY, resnet.FAMILY, cnn.FAMILY)}


class _Zoo(Mapping[str, ml_collections.ConfigDict]):
  """Zoo entries by name; each lookup hands out a fresh copy, so no caller can change the zoo."""

  def __init__(self, families: Sequence[Family]):
    self._configs: dict[str, ml_collections.ConfigDict] = {}
    self.families: dict[str, str] = {}
    for fam in families:
      for name, config in fam.configs.items():
        if name in self._configs:
          raise ValueError(f'Model name {name!r} is registered twice')
        self._configs[name] = config
        self.families[name] = fam.name

  def __getitem__(self, name: str) -> ml_collections.ConfigDict:
    return copy.deepcopy(self._configs[name])

  def __iter__(self) -> Iterator[str]:
    return iter(self._configs)

  def __len__(self) -> int:
    return len(self._configs)


MODEL_CONFIGS = _Zoo(list(FAMILIES.values()))
MODEL_FAMILIES: Mapping[str, str] = MODEL_CONFIGS.families


def by_name(name: str) -> Family:
  """The family `name` (as `MODEL_FAMILIES` and `LoadedModel.family` give it)."""
  if name not in FAMILIES:
    raise KeyError(f'Unknown model family {name!r}; known: {", ".join(FAMILIES)}')
  return FAMILIES[name]


def of_model(model_name: str) -> Family:
  """The family of zoo model `model_name`; KeyError naming the known models otherwise."""
  if model_name not in MODEL_FAMILIES:
    raise KeyError(f'Unknown model {model_name!r}; known models: '
                   f'{", ".join(sorted(MODEL_CONFIGS))}')
  return by_name(MODEL_FAMILIES[model_name])


def of_params(flat: Mapping[str, Any]) -> Family:
  """The family whose architecture flat parameters (our paths) describe.

  Raises:
    CheckpointError: no family reads its architecture from these parameters.
  """
  for fam in FAMILIES.values():
    if fam.matches_params is not None and fam.matches_params(flat):
      return fam
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
  for fam in FAMILIES.values():
    key_map = getattr(fam, library)
    if key_map is not None and key_map.matches(keys):
      return fam
  readable = [f.name for f in FAMILIES.values() if getattr(f, library) is not None]
  raise CheckpointError(f'Not a {library} state dict of the {", ".join(readable)} families')


def zoo_name(library: str, architecture: str) -> str | None:
  """The zoo name of `library`'s ('timm' or 'hf') model `architecture` (e.g. timm's
  'vit_tiny_patch16_224' -> 'ViT-Ti_16'), from the families' key maps; None where the zoo has
  none."""
  for fam in FAMILIES.values():
    key_map = getattr(fam, library)
    if key_map is not None and architecture in key_map.names:
      return key_map.names[architecture]
  return None


def model_class(name: str) -> type[nn.Module]:
  """The Flax module class of a zoo entry (its family's); KeyError naming the known models."""
  return of_model(name).module


def get_model(name: str, *, num_classes: int | None, **overrides: Any) -> nn.Module:
  """Builds zoo model `name`; `overrides` replace config fields (nested ones as dicts).

  Example: `get_model('ViT-B_16', num_classes=10, dtype='bfloat16',
  transformer={'dropout_rate': 0.1})`.
  """
  fam = of_model(name)
  return fam.build(MODEL_CONFIGS[name].to_dict(), overrides, num_classes=num_classes)


def _config_value(default: Any, annotation: Any) -> Any:
  """A default as a config field: None becomes a typed placeholder, so it can be overridden."""
  if default is not None:
    return default
  args = [a for a in typing.get_args(annotation) if a is not type(None)]
  kind = args[0] if len(args) == 1 and args[0] in (int, float, str, bool) else object
  return ml_collections.config_dict.placeholder(kind)


def model_config(name: str) -> ml_collections.ConfigDict:
  """The full field set of zoo model `name`: its zoo entry over every default of its module.

  Every field of the module (and of the dicts it hands to submodules, e.g. a ViT's
  `transformer`) is there, so a training config can override any of them from the command line
  (`--config.model.dtype=bfloat16`, `--config.model.transformer.remat=True`) and an export's
  model card records the whole architecture. `num_classes` and the name are not fields here.
  """
  fam = of_model(name)
  zoo = MODEL_CONFIGS[name].to_dict()
  defaults = family_lib.field_defaults(fam.module, frozenset({'num_classes', 'model_name'}))
  fields = {k: _config_value(*v) for k, v in defaults.items()}
  for key, value in zoo.items():
    if key != 'model_name':
      fields[key] = value
  for key, (cls, set_by_parent) in fam.nested.items():
    if isinstance(fields.get(key), Mapping):
      nested = family_lib.field_defaults(cls, set_by_parent)
      fields[key] = {**{k: _config_value(*v) for k, v in nested.items()}, **fields[key]}
  return ml_collections.ConfigDict(fields)


def init_shapes(model: nn.Module, image_size: tuple[int, int]) -> dict[str, Any]:
  """Every variable collection of `model` fed `image_size` images, as `jax.ShapeDtypeStruct`s.

  Nothing is computed or allocated (the input and the key are abstract too), so this runs for
  compile-only devices; checkpoint loaders check files against it. `intermediates` (sown by
  some modules) is left out; it is not state.
  """
  images = jax.ShapeDtypeStruct((1, *image_size, 3), jnp.float32)
  shapes = jax.eval_shape(
      lambda x: model.init(jax.random.PRNGKey(0), x, train=False), images)
  return {k: v for k, v in shapes.items() if k != 'intermediates'}
