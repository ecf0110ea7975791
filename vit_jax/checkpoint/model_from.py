"""The model a checkpoint describes: its family, architecture and parameters, ready to run.

The command-line tools use this so that any released or fine-tuned file runs with at most its
zoo name: the architecture of ViT, hybrid and Swin parameters is read from their shapes
(`architecture`), and a training export's model card names the rest. Converted files (timm,
Hugging Face), which have no zoo name, can be checked against the model they came from.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import flax.linen as nn
import jax
import numpy as np

from vit_jax import workdir
from vit_jax import families
from vit_jax import image_io
from vit_jax import models
from vit_jax.checkpoint import architecture
from vit_jax.checkpoint import npz
from vit_jax.checkpoint import pretrained
from vit_jax.checkpoint import tree
from vit_jax.checkpoint.errors import CheckpointError


class LoadedModel(NamedTuple):
  """A model, its parameters, and how to feed it."""
  model: nn.Module
  params: dict[str, Any]
  image_size: tuple[int, int]  # (height, width) the model was trained at
  normalization: image_io.Normalization  # see image_io.normalize
  family: str  # the name of its `families.Family`
  model_state: dict[str, Any] = {}  # other variable collections (BatchNorm statistics)
  class_names: tuple[str, ...] | None = None  # from the model card, where it names them

  @property
  def variables(self) -> dict[str, Any]:
    """What `model.apply` takes."""
    return {'params': self.params, **self.model_state}


def _tuples(value: Any) -> Any:
  """JSON lists back to the tuples that configs hold."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def load_file(path: str, model_name: str | None = None, *,
              image_size: int | tuple[int, int] | None = None,
              normalization: image_io.Normalization | None = None,
              **overrides: Any) -> LoadedModel:
  """The model of an `.npz` file, with the state and model card a training run exports beside it.

  Files without a card (the released checkpoints) are read as `load_model` reads parameters.
  Arguments as `load_model`'s; explicit ones win over the card.
  """
  return load_model(npz.load(path), model_name, image_size=image_size,
                    normalization=normalization, card=workdir.read_card(path),
                    model_state=workdir.read_state(path), **overrides)


def _check_card(card: Mapping[str, Any], flat: Mapping[str, Any],
                model_name: str | None) -> None:
  heads = architecture.num_classes(flat)
  if heads is not None and heads != card['num_classes']:
    raise CheckpointError(
        f'The model card says {card["num_classes"]} classes, but the checkpoint\'s head has '
        f'{heads}: the card belongs to another model')
  if model_name is not None and model_name != card['model_name']:
    raise CheckpointError(
        f'The model card says the model is {card["model_name"]!r}, not {model_name!r}')


def load_model(params: Mapping[str, Any], model_name: str | None = None, *,
               image_size: int | tuple[int, int] | None = None,
               normalization: image_io.Normalization | None = None,
               card: Mapping[str, Any] | None = None,
               model_state: Mapping[str, Any] | None = None,
               **overrides: Any) -> LoadedModel:
  """Builds the model that fits `params` (a nested tree, e.g. from `checkpoint.load`).

  Args:
    params: the checkpoint's parameters.
    model_name: a zoo name; its config is used, with the head and representation sizes taken
      from the checkpoint (so a ViT-B_16 name fits both ImageNet-21k and fine-tuned files). May
      be left out for ViT, hybrid and Swin checkpoints and for files with a model card; needed
      for the ResNets otherwise.
    image_size: overrides the resolution read from the card or the checkpoint.
    normalization: overrides the card's pixel normalisation and the family default (see
      `image_io.normalize`; timm's DeiT weights want 'imagenet', Google's ViTs 'minus_one_one').
    card: the model card of a training export (`workdir.read_card`): zoo name, config overrides,
      classes, image size and normalisation.
    model_state: non-parameter variables (BatchNorm statistics, `workdir.read_state`); required
      for models that have them.
    **overrides: further config fields, e.g. `sow_weights=True`.

  Raises:
    CheckpointError: the parameters (or state) do not fit the model (every problem named), the
      card contradicts them, or no model can be inferred from them.
  """
  flat = tree.flatten(params)
  if card is not None:
    _check_card(card, flat, model_name)
    model_name = card['model_name']
    overrides = {**_tuples(card['model_overrides']), **overrides}
    image_size = image_size or tuple(card['image_size'])
    if normalization is None:
      normalization = workdir.card_normalization(card)
  if model_name is None:
    family = families.of_params(flat)
    config = family.config_from_params(flat)
    model = family.build(config, overrides,
                         model_name=f'{family.module.__name__} (from checkpoint)')
  else:
    family = families.of_model(model_name)
    fields = {**family.fields_from_params(flat), **overrides}
    model = models.get_model(model_name, **fields)

  if image_size is None:
    image_size = family.image_size(flat, model)
  if isinstance(image_size, int):
    image_size = (image_size, image_size)

  all_shapes = models.init_shapes(model, image_size)
  shapes = all_shapes['params']
  state = {}
  for collection, expected_state in all_shapes.items():
    if collection == 'params':
      continue
    if not model_state or collection not in model_state:
      raise CheckpointError(
          f'{model_name or "The model"} has {collection!r} (e.g. BatchNorm statistics), but none '
          'were given: a training export keeps them in <name>_state.npz beside the parameters')
    state[collection] = pretrained.inspect_params(params=model_state[collection],
                                                  expected=expected_state)
  # Zero-strided stand-ins: inspect_params reads shapes and dtypes, never values.
  expected = jax.tree.map(lambda s: np.broadcast_to(np.zeros((), s.dtype), s.shape), shapes)
  scanned = any(k.startswith('Transformer/encoderblock/') for k in tree.flatten(expected))
  flat = tree.stack_encoder(flat) if scanned else tree.unstack_encoder(flat)
  try:
    params = pretrained.inspect_params(params=tree.unflatten(flat), expected=expected)
  except CheckpointError as e:
    raise CheckpointError(
        f'{model_name or "The inferred model"} at {image_size[0]}x{image_size[1]}: {e}') from e
  if normalization is None:
    normalization = family.normalization
  names = tuple(card['class_names']) if card and card.get('class_names') else None
  return LoadedModel(model, params, tuple(image_size), normalization, family.name, state, names)
