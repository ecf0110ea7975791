"""Everything a training job reads from and writes to its workdir (no TensorFlow).

Resume: `DIR/checkpoints/` holds the Orbax checkpoints of the train state (the last
`keep_checkpoints` kept), `DIR/skipped_images.json` the count of undecodable training images at
each of them, and `DIR/config.json` the settings of the run.

Export: `DIR/model.npz` holds the final parameters in the original layout, with the model card
and state sidecar of `models.card` beside it (and `DIR/model_ema.npz` for a weight EMA). Every
file is written atomically: a reader never sees a half-written model.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, TYPE_CHECKING

from absl import logging
import jax
import ml_collections

from vit_jax import checkpoint
from vit_jax.models import card as card_lib

if TYPE_CHECKING:
  import orbax.checkpoint as ocp


# ---------------------------------------------------------------------------------------------
# Export.


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
  card_lib.write_model(path, params, model_state, card)
  logging.info('Exported %s with its model card %s', path, card_lib.card_path_for(path))
  if ema_params is not None:
    ema_path = os.path.join(workdir, 'model_ema.npz')
    card_lib.write_model(ema_path, ema_params,
                         model_state if ema_model_state is None else ema_model_state, card)
    logging.info('Exported the weight EMA to %s', ema_path)


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
  try:
    restored = manager.restore(latest, args=ocp.args.StandardRestore(abstract))
  except ValueError as e:
    raise ValueError(
        f'The checkpoint of step {latest} in {manager.directory} does not hold the state this '
        'config trains: another model, optimizer or EMA setting, or a checkpoint written with '
        'accum_steps > 1 before accumulation stopped keeping optax.MultiSteps state. Resume '
        f'with the config that wrote it, or train in a new workdir. Orbax: {e}') from e
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
  """`DIR/config.json`: the settings the run started with (`training.settings.prepare`)."""
  with checkpoint.atomic_path(os.path.join(workdir, 'config.json')) as tmp, open(tmp, 'w') as f:
    f.write(config.to_json_best_effort(indent=2))


def hparams(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The settings as TensorBoard hparams: 'a/b' -> a scalar or string (others as JSON)."""
  out = {}
  for key, value in checkpoint.flatten(config.to_dict()).items():
    out[key] = value if isinstance(value, (int, float, str, bool)) else json.dumps(value)
  return out
