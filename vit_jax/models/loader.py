"""The one loader: any model file, with its model card and state, as a model ready to run.

Every tool (`classify`, `visualize`, `fewshot`), the distillation teacher and fine-tuning's
pre-trained load (`load_pretrained`) read model files through here, so they accept the same files
and fail the same way. A file is anything `tools.convert` reads (`.npz` in any layout, timm
`.safetensors`/`.pth`, a Hugging Face folder), on local disk or object storage (`gs://...`,
`checkpoint.paths`), or a name on the Hugging Face Hub (`hf://ORG/REPO[/FILE]`,
`hf-hub:ORG/REPO`, `checkpoint.hub`). Beside a file, a training export's model card
(`model.json`) and state sidecar (`model_state.npz`, BatchNorm statistics) are read when present
(`models.card`); a timm repo's `config.json` is its card (`card.from_timm`: zoo name, classes,
image size, mean/std), and a transformers repo is the HF folder it holds. The architecture of
ViT, hybrid and Swin parameters is read from their shapes, so released and converted files run
with at most their zoo name.

Faults: FileNotFoundError when nothing is at the path; CheckpointError (a ValueError) for every
file that is there but does not give a runnable model, with the problem named.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, NamedTuple

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.checkpoint import hub
from vit_jax.checkpoint import paths
from vit_jax.checkpoint import pretrained
from vit_jax.checkpoint import tree
from vit_jax.checkpoint.errors import CheckpointError
from vit_jax.data import image_io
from vit_jax.models import card as card_lib
from vit_jax.models import formats
from vit_jax.models import registry


class ModelFile(NamedTuple):
  """A model file as read, before any model is built."""
  params: dict[str, np.ndarray]  # flat, original `.npz` keys
  format: str  # a name of `formats.FORMATS`
  gelu_approximate: bool | None  # the GELU form the format implies; None: it does not say
  card: dict[str, Any] | None  # the model card beside the file, if any
  model_state: dict[str, Any] | None  # the state sidecar beside the file (nested), if any


class LoadedModel(NamedTuple):
  """A model, its parameters, and how to feed it."""
  model: nn.Module
  params: dict[str, Any]
  image_size: tuple[int, int]  # (height, width) the model was trained at
  normalization: image_io.Normalization  # see image_io.normalize
  family: str  # the name of its `Family`
  model_state: dict[str, Any] = {}  # other variable collections (BatchNorm statistics)
  class_names: tuple[str, ...] | None = None  # from the model card, where it names them
  pp_eval: str | None = None  # the job's eval preprocessing, from the model card

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


def locate(path: str | os.PathLike) -> tuple[str, dict[str, Any] | None]:
  """Where the model file of `path` lies, and the card that comes with it from the Hub.

  A Hub name is fetched (`checkpoint.hub.fetch`, into huggingface_hub's cache): a timm repo
  gives its weights file with its `config.json` as the card (`card.from_timm`), a
  transformers repo its folder (no card). Any other path is checked and returned as it is.

  Raises:
    FileNotFoundError: nothing at `path` (`hub.HubError`, naming what the repo holds, for a
      Hub name).
  """
  path = os.fspath(path)
  if paths.is_hub_name(path):
    fetched = hub.fetch(path)
    return fetched.path, card_lib.from_timm(fetched.timm) if fetched.timm else None
  if not paths.exists(path):
    raise FileNotFoundError(f'No model file at {path}')
  return path, None


def read_file(path: str | os.PathLike, *, model_name: str | None = None,
              num_heads: int | None = None) -> ModelFile:
  """Reads a model file of any format with the card and state sidecar beside it.

  Args:
    path: `.npz`, timm or HF state dict file, or HF folder (local or a storage URL), or a Hub
      name (`locate`).
    model_name: a zoo name (gives the attention heads, which timm files do not record).
    num_heads: attention heads, for models outside the zoo.

  Raises:
    FileNotFoundError: nothing at `path`.
    CheckpointError: the file, its card or its state is unreadable, named in the message.
  """
  path, card = locate(path)
  card = card or card_lib.read_card(path)
  if card is not None and num_heads is None:  # The card's architecture, not the zoo entry's.
    num_heads = (card['model_overrides'].get('transformer') or {}).get('num_heads')
  read = formats.read(path, num_heads=num_heads,
                      model_name=model_name or (card or {}).get('model_name'))
  return ModelFile(read.params, read.format, read.gelu_approximate, card,
                   card_lib.read_state(path))


def load(path: str | os.PathLike, model_name: str | None = None, *,
         image_size: int | tuple[int, int] | None = None,
         normalization: image_io.Normalization | None = None, num_heads: int | None = None,
         **overrides: Any) -> LoadedModel:
  """The model of any model file, fed as its card says (see the module docstring).

  Arguments as `load_model`'s (and `read_file`'s `num_heads`); explicit ones win over the card,
  the card over what the format implies (timm's and HF's exact GELU), that over family defaults.
  """
  file = read_file(path, model_name=model_name, num_heads=num_heads)
  return load_model(tree.unflatten(file.params), model_name, image_size=image_size,
                    normalization=normalization, card=file.card, model_state=file.model_state,
                    gelu_approximate=file.gelu_approximate, **overrides)


def _check_card(card: Mapping[str, Any], flat: Mapping[str, Any],
                model_name: str | None) -> None:
  heads = pretrained.num_classes(flat)
  if heads is not None and heads != card['num_classes']:
    raise CheckpointError(
        f'The model card says {card["num_classes"]} classes, but the checkpoint\'s head has '
        f'{heads}: the card belongs to another model')
  if model_name is not None and card['model_name'] not in (None, model_name):
    raise CheckpointError(
        f'The model card says the model is {card["model_name"]!r}, not {model_name!r}')


def load_model(params: Mapping[str, Any], model_name: str | None = None, *,
               image_size: int | tuple[int, int] | None = None,
               normalization: image_io.Normalization | None = None,
               card: Mapping[str, Any] | None = None,
               model_state: Mapping[str, Any] | None = None,
               gelu_approximate: bool | None = None, **overrides: Any) -> LoadedModel:
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
    card: the model card of a training export (`card.read_card`): zoo name, model config,
      classes, image size and normalisation.
    model_state: non-parameter variables (BatchNorm statistics, `card.read_state`); required
      for models that have them.
    gelu_approximate: the GELU form the file's format implies, used where neither the card nor
      `overrides` set one (None: the zoo's).
    **overrides: further config fields, e.g. `sow_weights=True`.

  Raises:
    CheckpointError: the parameters (or state) do not fit the model (every problem named), the
      card contradicts them, or no model can be inferred from them.
  """
  flat = tree.flatten(params)
  if card is not None:
    _check_card(card, flat, model_name)
    model_name = card['model_name'] or model_name
    overrides = {**_tuples(card['model_overrides']), **overrides}
    image_size = image_size or tuple(card['image_size'])
    if normalization is None:
      normalization = card_lib.card_normalization(card)
  if model_name is None:
    family = registry.of_params(flat)
    config = family.config_from_params(flat)
    model = family.build(config, overrides,
                         model_name=f'{family.module.__name__} (from checkpoint)')
  else:
    family = registry.of_model(model_name)
    fields = {**family.fields_from_params(flat), **overrides}
    model = registry.get_model(model_name, **fields)
  transformer = getattr(model, 'transformer', None)
  # A training export's card records the whole transformer config; a timm repo's card none.
  if (gelu_approximate is not None and 'transformer' not in overrides
      and isinstance(transformer, Mapping)):
    model = model.clone(transformer={**transformer, 'gelu_approximate': gelu_approximate})

  if image_size is None:
    image_size = family.image_size(flat, model)
  if isinstance(image_size, int):
    image_size = (image_size, image_size)

  all_shapes = registry.init_shapes(model, image_size)
  shapes = all_shapes.pop('params')
  state = _fit_state(model_state, all_shapes, model_name or 'The model')
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
  return LoadedModel(model, params, tuple(image_size), normalization, family.name, state, names,
                     card['pp_eval'] if card else None)


def _fit_state(model_state: Mapping[str, Any] | None, expected: Mapping[str, Any],
               model_name: str) -> dict[str, Any]:
  """The model's non-parameter collections (`expected`, by name) from `model_state`, checked.

  Raises:
    CheckpointError: a collection the model has is missing, or does not fit (named).
  """
  missing = sorted(set(expected) - set(model_state or {}))
  if missing:
    raise CheckpointError(
        f'{model_name} has the collections {missing} (e.g. BatchNorm statistics), which the '
        'checkpoint\'s state lacks: a training export keeps them in <name>_state.npz beside '
        'the parameters')
  return {collection: pretrained.inspect_params(params=model_state[collection], expected=shapes)
          for collection, shapes in expected.items()}


def load_pretrained(path: str | os.PathLike, model: nn.Module, image_size: tuple[int, int], *,
                    model_name: str, seed: int = 0, posemb_resize: str = 'zoom',
                    resample_patch_embedding: bool = False
                    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
  """A pre-trained file fitted to a fresh `model` for fine-tuning: (params, model state).

  The file is any that `read_file` reads. The model is initialised with `PRNGKey(seed)` for its
  fresh head (the model's own initialiser computes it, so this init computes values, not only
  shapes), then the family's `fit_pretrained` fits the file's parameters to it (head replaced,
  position embeddings resized, ...). The state is the file's exported non-parameter collections
  (BatchNorm statistics), checked as `load_model` checks them; None where the file has none (the
  model's initial state is then the one to use) or the model needs none.

  Args:
    path: the pre-trained file.
    model: the model to fine-tune (with its new head size).
    image_size: the (height, width) it is fine-tuned at.
    model_name: its zoo name (gives its family, and the attention heads timm files lack).
    seed: the seed of the fresh head's initialisation.
    posemb_resize: how position embeddings are resized (`checkpoint.resize.POSEMB_METHODS`).
    resample_patch_embedding: resample a patch embedding of another patch size (FlexiViT)
      instead of raising.

  Raises:
    FileNotFoundError: nothing at `path`.
    CheckpointError: the file does not fit the model, every problem named.
  """
  file = read_file(path, model_name=model_name)
  image_size = tuple(image_size)
  init_params = jax.device_get(jax.jit(lambda: model.init(
      jax.random.PRNGKey(seed), jnp.zeros((1, *image_size, 3)), train=False))()['params'])
  params = registry.of_model(model_name).fit_pretrained(
      tree.unflatten(file.params), init_params, model, image_size, posemb_resize=posemb_resize,
      resample_patch_embedding=resample_patch_embedding)
  logging.info('Loaded pre-trained parameters from %s (%s)', path, file.format)
  expected = registry.init_shapes(model, image_size)
  expected.pop('params')
  if not file.model_state or not expected:
    return params, None
  return params, _fit_state(file.model_state, expected, model_name)
