"""The model card and state sidecar of an exported model: writing them, reading them back.

A training export is `model.npz` (the parameters in the original layout, which timm and
`checkpoint.load` read) with, beside it:

- `model_state.npz`: the other variable collections (BatchNorm's `batch_stats`), when the model
  has any;
- `model.json`, the model card: zoo name and the model's full config, number of classes and their
  names, the image size and the eval preprocessing with its pixel normalisation.

`models.loader` reads both, so the tools feed a model as it was trained; released checkpoints
have neither, and the loader then falls back to per-family defaults. A timm repo on the Hugging
Face Hub describes its weights in its `config.json`; `from_timm` turns that into a card.

Paths are local or object-store URLs (`checkpoint.paths`). Every file is written atomically
(`paths.atomic_local_path`: a local rename, or one upload of the whole object): a reader never
sees a half-written model.
"""

from __future__ import annotations

import json
import os
import posixpath
from typing import Any, Mapping, Sequence

import numpy as np

from vit_jax import checkpoint
from vit_jax.checkpoint import files
from vit_jax.checkpoint import hub
from vit_jax.checkpoint import paths
from vit_jax.data import image_io
from vit_jax.models import registry


CARD_FORMAT = 'vit_jax.model_card'
CARD_VERSION = 1
_CARD_FIELDS = ('model_name', 'model_overrides', 'num_classes', 'class_names', 'image_size',
                'pp_eval', 'normalization')


def state_path_for(params_path: str | os.PathLike) -> str:
  """Where the non-parameter variables (BatchNorm statistics) of an exported model live.

  Always an `.npz` (`model.npz`, `model.safetensors` -> `model_state.npz`): the state is ours,
  whatever format the parameters were converted to.
  """
  root = posixpath.splitext(os.fspath(params_path).rstrip('/'))[0]
  return f'{root}_state.npz'


def card_path_for(params_path: str | os.PathLike) -> str:
  """Where the model card of an exported model lives: `model.npz` -> `model.json`."""
  return posixpath.splitext(os.fspath(params_path).rstrip('/'))[0] + '.json'


def _plain(overrides: Any) -> dict[str, Any]:
  """A (possibly nested ConfigDict) mapping as plain dicts and lists."""
  if hasattr(overrides, 'to_dict'):
    overrides = overrides.to_dict()
  return {k: _plain(v) if isinstance(v, Mapping) or hasattr(v, 'to_dict') else v
          for k, v in dict(overrides).items()}


def make_card(*, model_name: str | None, model_overrides: Mapping[str, Any], num_classes: int,
              class_names: Sequence[str] | None, image_size: int | Sequence[int],
              pp_eval: str | None, normalization: image_io.Normalization) -> dict[str, Any]:
  """A model card (see the module docstring), as JSON-ready values."""
  size = [image_size] * 2 if isinstance(image_size, int) else list(image_size)
  if class_names is not None and len(class_names) != num_classes:
    raise ValueError(f'{len(class_names)} class names for {num_classes} classes')
  if not isinstance(normalization, str):
    normalization = {'mean': list(normalization[0]), 'std': list(normalization[1])}
  return {'format': CARD_FORMAT, 'version': CARD_VERSION, 'model_name': model_name,
          'model_overrides': json.loads(json.dumps(_plain(model_overrides))),
          'num_classes': int(num_classes),
          'class_names': list(class_names) if class_names is not None else None,
          'image_size': [int(s) for s in size], 'pp_eval': pp_eval,
          'normalization': normalization}


def from_timm(timm: hub.TimmConfig) -> dict[str, Any]:
  """The card of a timm repo's weights, from its `config.json` (`hub.TimmConfig`).

  Its zoo name comes from timm's architecture name (`registry.zoo_name`; None where the zoo has
  no such model: the loader then reads the architecture from the parameters). The card names
  no architecture fields: the zoo entry and the file give them (with timm's exact GELU). The
  eval preprocessing is left to the tools' defaults (timm's resize-and-crop is not ours).
  """
  names = timm.label_names
  if names is not None and len(names) != timm.num_classes:
    names = None  # A config that names other classes than its head has: no names.
  return make_card(model_name=registry.zoo_name('timm', timm.architecture), model_overrides={},
                   num_classes=timm.num_classes, class_names=names,
                   image_size=timm.image_size, pp_eval=None,
                   normalization=(timm.mean, timm.std))


def write_model(path: str | os.PathLike, params: Mapping[str, Any],
                model_state: Mapping[str, Any] | None = None,
                card: Mapping[str, Any] | None = None) -> None:
  """Writes `path` (the parameters, `.npz`) and, where given, its state and card sidecars."""
  checkpoint.save(params, path)
  write_sidecars(path, model_state, card)


def write_sidecars(params_path: str | os.PathLike, model_state: Mapping[str, Any] | None,
                   card: Mapping[str, Any] | None) -> None:
  """Writes the state and card sidecars of the model file `params_path`, where given."""
  if model_state:
    checkpoint.save(model_state, state_path_for(params_path))
  if card is not None:
    paths.write_text(card_path_for(params_path), json.dumps(card, indent=2))


def read_card(params_path: str | os.PathLike) -> dict[str, Any] | None:
  """The model card beside `params_path`, or None where there is none.

  Raises:
    CheckpointError: the card is not readable JSON or lacks fields.
  """
  path = card_path_for(params_path)
  if not paths.exists(path):
    return None
  try:
    card = json.loads(paths.read_text(path))
  except (OSError, ValueError) as e:
    raise checkpoint.CheckpointError(f'Cannot read the model card {path}: {e}') from e
  if not isinstance(card, dict) or card.get('format') != CARD_FORMAT:
    raise checkpoint.CheckpointError(f'{path} is not a vit_jax model card (format '
                                     f'{CARD_FORMAT!r})')
  missing = [k for k in _CARD_FIELDS if k not in card]
  if missing:
    raise checkpoint.CheckpointError(f'The model card {path} lacks {", ".join(missing)}')
  return card


def card_normalization(card: Mapping[str, Any]) -> image_io.Normalization:
  """The card's pixel normalisation, as `image_io.normalize` takes it."""
  value = card['normalization']
  if isinstance(value, dict):
    return image_io.normalization_name(value['mean'], value['std'])
  return value


def read_state(params_path: str | os.PathLike) -> dict[str, Any] | None:
  """The exported non-parameter variables beside `params_path` (nested), or None."""
  path = state_path_for(params_path)
  if not paths.exists(path):
    return None
  return checkpoint.unflatten(files.read_npz(path))
