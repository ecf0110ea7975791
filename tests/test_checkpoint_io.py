"""`benchmarking.checkpoint_io`: the train state it checkpoints, and its measurement on a local
folder and on `gs://` (the GCS server on localhost)."""

import jax
import numpy as np
import pytest

from vit_jax.benchmarking import checkpoint_io


def test_train_state_is_the_params_and_both_adam_moments():
  state = checkpoint_io.train_state('ViT-Ti_16')
  params = sum(x.size for x in jax.tree.leaves(state['params']))
  assert params == 5_717_416  # timm's vit_tiny_patch16_224 (shared/data/weights/README.md).
  moments = [x for x in jax.tree.leaves(state['opt_state']) if x.dtype == np.float32]
  assert sum(x.size for x in moments) == 2 * params
  assert all(float(np.abs(x).max()) > 0 for x in moments)  # Filled, as after training.
  # float32 weights and moments, and two int32 counters (the step and Adam's count).
  assert checkpoint_io.state_bytes(state) == 3 * 4 * params + 2 * 4


@pytest.mark.parametrize('where', ['local', 'gs'])
def test_measure_saves_restores_and_cleans_up(where, tmp_path, request):
  directory = (str(tmp_path / 'ckpt') if where == 'local'
               else request.getfixturevalue('gcs_root') + '/ckpt')
  state = {'w': jax.device_put(np.random.default_rng(0).standard_normal((256, 256), np.float32)),
           'params': {'head': {'kernel': jax.device_put(np.ones((8, 4), np.float32))}}}
  rows = checkpoint_io.measure(directory, state, repeats=2)
  assert len(rows) == 2
  for row in rows:
    assert row['save_s'] > 0 and row['restore_s'] > 0
    assert 0.8 * 256 * 256 * 4 < row['bytes'] < 2 * 256 * 256 * 4 + 100_000  # Data + metadata.
  table = checkpoint_io.table({directory: rows}, checkpoint_io.state_bytes(state), 'tiny')
  assert f'| `{directory}` |' in table
