"""Everything a training job reads from and writes to its workdir (no TensorFlow).

The workdir is a local folder or an object-store URL (`gs://bucket/run`): every file goes
through `checkpoint.paths`, and Orbax gets `paths.orbax_path`. On a pod all hosts use the same
workdir on a bucket; they share no local disk.

Resume: `DIR/checkpoints/` holds the Orbax checkpoints of the train state (the last
`keep_checkpoints` kept; every host writes its shards, Orbax commits the step once all have),
`DIR/skipped_images.json` the count of undecodable training images at each of them (written by
process 0, read by every host at a restart), and `DIR/config.json` the settings of the run.

Export: `DIR/model.npz` holds the final parameters in the original layout, with the model card
and state sidecar of `models.card` beside it (and `DIR/model_ema.npz` for a weight EMA), written
by process 0. Every file is written atomically (`paths.atomic_local_path`: a local rename, or one
upload of the complete object): a reader never sees a half-written model.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, TYPE_CHECKING

from absl import logging
import jax
import ml_collections

from vit_jax import checkpoint
from vit_jax.checkpoint import paths
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
  path = paths.join(workdir, 'model.npz')
  card_lib.write_model(path, params, model_state, card)
  logging.info('Exported %s with its model card %s', path, card_lib.card_path_for(path))
  if ema_params is not None:
    ema_path = paths.join(workdir, 'model_ema.npz')
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
      paths.orbax_path(paths.join(workdir, 'checkpoints')),
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


def _skipped_counts(workdir: str) -> dict[str, int]:
  """`DIR/skipped_images.json`: {step: count} (empty where there is no file)."""
  try:
    return json.loads(paths.read_text(paths.join(workdir, 'skipped_images.json')))
  except FileNotFoundError:
    return {}


def skipped_images_at(workdir: str, step: int) -> int:
  """The `skipped_images` count saved with the checkpoint of `step` (0 if none).

  Every host reads it from the workdir (on a pod, the bucket): hosts share no local file.
  """
  return int(_skipped_counts(workdir).get(str(step), 0))


def save_skipped_images(workdir: str, step: int, count: int) -> None:
  """Keeps the count beside the checkpoints (by step: a resumed run may restore any of them).

  Only process 0 writes (every host counts the same global total).
  """
  if jax.process_index() != 0 or not count:
    return  # No file is a count of 0.
  counts = _skipped_counts(workdir)
  counts[str(step)] = count
  paths.write_text(paths.join(workdir, 'skipped_images.json'), json.dumps(counts))


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """`DIR/config.json`: the settings the run started with (`training.settings.prepare`)."""
  paths.write_text(paths.join(workdir, 'config.json'), config.to_json_best_effort(indent=2))


def hparams(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The settings as TensorBoard hparams: 'a/b' -> a scalar or string (others as JSON)."""
  out = {}
  for key, value in checkpoint.flatten(config.to_dict()).items():
    out[key] = value if isinstance(value, (int, float, str, bool)) else json.dumps(value)
  return out
