"""Everything a training job reads from and writes to its workdir (no TensorFlow).

Resume: `DIR/checkpoints/` holds the Orbax checkpoints of the train state (the last
`keep_checkpoints` kept), `DIR/skipped_images.json` the count of undecodable training images at
each of them, and `DIR/config.json` the config of the run.

Export: `DIR/model.npz` holds the final parameters in the original layout (timm and
`checkpoint.load` read it). Beside it:

- `model_state.npz`: the other variable collections (BatchNorm's `batch_stats`), when the model
  has any;
- `model.json`, the model card: zoo name and config overrides, number of classes and their names,
  the image size and the eval preprocessing with its pixel normalisation. The tools
  (`classify`, `visualize`, `checkpoint.model_from.load_file`) feed the model as it was trained from
  it; released checkpoints have none, and the tools then fall back to per-family defaults.

Every file is written atomically: a reader never sees a half-written model.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence, TYPE_CHECKING

from absl import logging
import jax
import ml_collections
import numpy as np

from vit_jax import checkpoint
from vit_jax import image_io

if TYPE_CHECKING:
  import orbax.checkpoint as ocp


# ---------------------------------------------------------------------------------------------
# Export.


CARD_FORMAT = 'vit_jax.model_card'
CARD_VERSION = 1
_CARD_FIELDS = ('model_name', 'model_overrides', 'num_classes', 'class_names', 'image_size',
                'pp_eval', 'normalization')


def state_path_for(params_path: str | os.PathLike) -> str:
  """Where the non-parameter variables (BatchNorm statistics) of an exported model live."""
  root, ext = os.path.splitext(os.fspath(params_path))
  return f'{root}_state{ext}'


def card_path_for(params_path: str | os.PathLike) -> str:
  """Where the model card of an exported model lives: `model.npz` -> `model.json`."""
  return os.path.splitext(os.fspath(params_path))[0] + '.json'


def _plain(overrides: Any) -> dict[str, Any]:
  """A (possibly nested ConfigDict) mapping as plain dicts and lists."""
  if hasattr(overrides, 'to_dict'):
    overrides = overrides.to_dict()
  return {k: _plain(v) if isinstance(v, Mapping) or hasattr(v, 'to_dict') else v
          for k, v in dict(overrides).items()}


def make_card(*, model_name: str, model_overrides: Mapping[str, Any], num_classes: int,
              class_names: Sequence[str] | None, image_size: int | Sequence[int], pp_eval: str,
              normalization: image_io.Normalization) -> dict[str, Any]:
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


def write_model(path: str | os.PathLike, params: Mapping[str, Any],
                model_state: Mapping[str, Any] | None = None,
                card: Mapping[str, Any] | None = None) -> None:
  """Writes `path` (the parameters) and, where given, its state and card sidecars."""
  checkpoint.save(params, path)
  if model_state:
    checkpoint.save(model_state, state_path_for(path))
  if card is not None:
    with checkpoint.atomic_path(card_path_for(path)) as tmp, open(tmp, 'w') as f:
      json.dump(card, f, indent=2)


def export_final(workdir: str, params: Any, model_state: Any, ema_params: Any | None,
                 card: Mapping[str, Any], ema_model_state: Any | None = None) -> None:
  """Writes `DIR/model.npz` (and `DIR/model_ema.npz` for a weight EMA) with their sidecars.

  The EMA's sidecar `model_ema_state.npz` holds the averaged `ema_model_state` (BatchNorm
  statistics) where given, else the live `model_state`.

  Call on every process with gathered host arrays; only process 0 writes.
  """
  if jax.process_index() != 0:
    return
  path = os.path.join(workdir, 'model.npz')
  write_model(path, params, model_state, card)
  logging.info('Exported %s with its model card %s', path, card_path_for(path))
  if ema_params is not None:
    ema_path = os.path.join(workdir, 'model_ema.npz')
    write_model(ema_path, ema_params,
                model_state if ema_model_state is None else ema_model_state, card)
    logging.info('Exported the weight EMA to %s', ema_path)


def read_card(params_path: str | os.PathLike) -> dict[str, Any] | None:
  """The model card beside `params_path`, or None where there is none.

  Raises:
    CheckpointError: the card is not readable JSON or lacks fields.
  """
  path = card_path_for(params_path)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      card = json.load(f)
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
  if not os.path.exists(path):
    return None
  with np.load(path) as data:
    return checkpoint.unflatten({k: data[k] for k in data.files})


# ---------------------------------------------------------------------------------------------
# Resume.


def checkpoint_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  """The Orbax manager of `workdir`'s train-state checkpoints, keeping the last `keep`."""
  # Orbax is imported here, not with the module: the tools that read model cards need none of it.
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top,redefined-outer-name
  return ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, 'checkpoints')),
      options=ocp.CheckpointManagerOptions(max_to_keep=int(keep), create=True))


def restore_latest(manager: ocp.CheckpointManager, state: Any, shardings: Any) -> Any:
  """The latest checkpoint of `manager` laid out as `shardings`, or `state` where there is none.

  `state` gives the tree structure, shapes and dtypes the checkpoint must have.
  """
  latest = manager.latest_step()
  if latest is None:
    return state
  abstract = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top,redefined-outer-name
  restored = manager.restore(latest, args=ocp.args.StandardRestore(abstract))
  logging.info('Resumed from the checkpoint of step %d in %s', latest, manager.directory)
  return restored


def save_checkpoint(manager: ocp.CheckpointManager, step: int, state: Any) -> None:
  """Starts saving `state` as the checkpoint of `step` (asynchronous; see `wait_until_finished`)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top,redefined-outer-name
  manager.save(step, args=ocp.args.StandardSave(state))


def _skipped_path(workdir: str) -> str:
  return os.path.join(workdir, 'skipped_images.json')


def skipped_images_at(workdir: str, step: int) -> int:
  """The `skipped_images` count saved with the checkpoint of `step` (0 if none)."""
  try:
    with open(_skipped_path(workdir)) as f:
      return int(json.load(f).get(str(step), 0))
  except FileNotFoundError:
    return 0


def save_skipped_images(workdir: str, step: int, count: int) -> None:
  """Keeps the count beside the checkpoints (by step: a resumed run may restore any of them)."""
  if jax.process_index() != 0 or not count:
    return  # No file is a count of 0.
  path = _skipped_path(workdir)
  try:
    with open(path) as f:
      counts = json.load(f)
  except FileNotFoundError:
    counts = {}
  counts[str(step)] = count
  with checkpoint.atomic_path(path) as tmp, open(tmp, 'w') as f:
    json.dump(counts, f)


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """`DIR/config.json`: the config the run started with."""
  with checkpoint.atomic_path(os.path.join(workdir, 'config.json')) as tmp, open(tmp, 'w') as f:
    f.write(config.to_json_best_effort(indent=2))
