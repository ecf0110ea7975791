"""Few-shot linear probe: the closed-form ridge solution against NumPy's, shot selection."""

import numpy as np
import pytest

from vit_jax.tools import fewshot as fewshot_command
from vit_jax.training import fewshot


def numpy_probe(x, y, num_classes, l2_reg):
  mean, std = x.mean(0, keepdims=True), x.std(0, keepdims=True) + 1e-5
  xs = np.pad((x - mean) / std, ((0, 0), (0, 1)), constant_values=fewshot.BIAS_CONSTANT)
  targets = 2. * np.eye(num_classes)[y] - 1.
  w = np.linalg.solve(xs.T @ xs + l2_reg * np.eye(xs.shape[1]), xs.T @ targets)
  return mean, std, w


@pytest.mark.parametrize('n,d', [(40, 8), (10, 30)])  # Primal (n >= d) and dual (n < d) forms.
def test_lsr_equals_numpy_ridge(n, d):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((n, d)) * 3 + 1
  y = rng.integers(0, 4, n)
  for l2_reg in (0.1, 2.**10):
    mean, std, w = fewshot.fit_lsr(x, y, 4, l2_reg)
    _, _, expected = numpy_probe(x, y, 4, l2_reg)
    # float32 eigh of a Gram matrix whose bias column is 100 (condition ~1e6 at l2_reg 0.1):
    # measured 1.1e-3 of the largest weight in one process, under 1e-3 in another (XLA's CPU
    # reductions follow the thread count), so the bound is 2e-3.
    np.testing.assert_allclose(w, expected, rtol=0, atol=2e-3 * np.abs(expected).max())
    x_test = rng.standard_normal((20, d))
    xs = np.pad((x_test - mean) / std, ((0, 0), (0, 1)), constant_values=fewshot.BIAS_CONSTANT)
    np.testing.assert_array_equal(fewshot.predict_lsr((mean, std, w), x_test),
                                  (xs @ expected).argmax(1))


def test_separable_classes_are_learned_from_one_shot():
  rng = np.random.default_rng(1)
  centres = rng.standard_normal((5, 16)) * 10
  y_train, y_test = np.arange(5).repeat(30), np.arange(5).repeat(20)
  train = (centres[y_train] + rng.standard_normal((150, 16)), y_train)
  test = (centres[y_test] + rng.standard_normal((100, 16)), y_test)
  accuracies = fewshot.probe_accuracies(train, test, 5, shots=(1, 5, 25), l2_reg=1.)
  assert accuracies[25] == 1.0 and accuracies[5] > 0.9


def test_select_shots():
  labels = np.array([0, 1, 0, 2, 1, 0, 2, 1, 2])
  idx = fewshot.select_shots(labels, 2, 3, seed=3)
  assert sorted(labels[idx].tolist()) == [0, 0, 1, 1, 2, 2] and len(set(idx)) == 6
  with pytest.raises(ValueError, match='Class 0 has 3'):
    fewshot.select_shots(labels, 4, 3)


def test_shots_are_big_visions_draw_and_seeds_are_averaged():
  labels = np.random.default_rng(0).integers(0, 4, 200)
  for seed in range(3):
    # big_vision fewshot_lsr.compute_fewshot_metrics: a permutation per class, from one rng.
    rng = np.random.default_rng(seed)
    theirs = np.concatenate([rng.permutation(np.where(labels == c)[0])[:5] for c in range(4)])
    np.testing.assert_array_equal(fewshot.select_shots(labels, 5, 4, seed), theirs)
  x = np.random.default_rng(1).standard_normal((200, 6)).astype(np.float32) + labels[:, None]
  per_seed = [fewshot.probe_accuracies((x, labels), (x, labels), 4, (1, 5), seed=s)
              for s in range(3)]
  averaged = fewshot.probe_accuracies((x, labels), (x, labels), 4, (1, 5), num_seeds=3)
  for n in (1, 5):
    assert averaged[n] == pytest.approx(np.mean([r[n] for r in per_seed]))


def test_command_preprocesses_as_big_visions_fewshot_config():
  # big_vision configs/common_fewshot.py: decode|resize(256)|central_crop(224)|value_range(-1,1).
  assert fewshot_command.default_pp(224, 'minus_one_one') == (
      'resize(256)|central_crop(224)|value_range(-1, 1)')
  assert fewshot_command.default_pp(384, 'imagenet') == (
      'resize(439)|central_crop(384)|normalize("imagenet")')
