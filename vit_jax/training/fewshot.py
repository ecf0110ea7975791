"""Few-shot linear probes on frozen features (big_vision's `fewshot_lsr` evaluator).

For each n in `shots`, n training images per class are embedded with the model's pre-logits
features; the features are standardised (train mean and std), a large constant bias feature is
appended, and a ridge regression onto +-1 one-hot targets is solved in closed form; the probe's
argmax accuracy on the test images is the n-shot accuracy. The solve uses one eigendecomposition
of the smaller Gram matrix (X^T X or X X^T), as big_vision does.

The training loop runs it as an evaluator (a `fewshot` entry of `config.evals`); `tools.fewshot`
is the command.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import models
from vit_jax.models import outputs

# Large, so that the bias is almost unregularised (big_vision's value).
BIAS_CONSTANT = 100.
DEFAULT_SHOTS = (1, 5, 10, 25)
DEFAULT_L2_REG = 2.**10


def _standardise(x: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
  x = (x - mean) / std
  return jnp.pad(x, ((0, 0), (0, 1)), constant_values=BIAS_CONSTANT)


def fit_lsr(x: jax.Array, y: jax.Array, num_classes: int,
            l2_reg: float = DEFAULT_L2_REG) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Ridge regression of +-1 one-hot targets on standardised features.

  Returns (mean, std, w) with w of shape (features + 1, classes); see `predict_lsr`.
  """
  x = jnp.asarray(x, jnp.float32)
  mean = jnp.mean(x, axis=0, keepdims=True)
  std = jnp.std(x, axis=0, keepdims=True) + 1e-5
  x = _standardise(x, mean, std)
  targets = 2. * jax.nn.one_hot(y, num_classes) - 1.
  n, d = x.shape
  if n >= d:  # w = (X^T X + l I)^-1 X^T Y, through the eigenbasis of X^T X.
    eigs, q = jnp.linalg.eigh(x.T @ x)
    rhs, lhs = q.T @ (x.T @ targets), q
  else:  # The same w = X^T (X X^T + l I)^-1 Y, with the n x n Gram matrix.
    eigs, q = jnp.linalg.eigh(x @ x.T)
    rhs, lhs = q.T @ targets, x.T @ q
  w = (lhs / (eigs + l2_reg)[None]) @ rhs
  return mean, std, w


def predict_lsr(probe: tuple[jax.Array, jax.Array, jax.Array], x: jax.Array) -> jax.Array:
  """Class predictions of a `fit_lsr` probe."""
  mean, std, w = probe
  return jnp.argmax(_standardise(jnp.asarray(x, jnp.float32), mean, std) @ w, axis=1)


def select_shots(labels: np.ndarray, shots: int, num_classes: int, seed: int = 0) -> np.ndarray:
  """Indices of `shots` examples of each class, as big_vision's fewshot_lsr draws them.

  Raises:
    ValueError: a class with fewer than `shots` examples (naming it).
  """
  rng = np.random.default_rng(seed)
  picked = []
  for c in range(num_classes):
    of_class = rng.permutation(np.where(labels == c)[0])[:shots]
    if len(of_class) < shots:
      raise ValueError(f'Class {c} has {len(of_class)} training examples, fewer than {shots} '
                       'shots; use a larger fewshot train split')
    picked.append(of_class)
  return np.concatenate(picked)


def probe_accuracies(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                     num_classes: int, shots: Sequence[int] = DEFAULT_SHOTS,
                     l2_reg: float = DEFAULT_L2_REG, seed: int = 0,
                     num_seeds: int = 1) -> dict[int, float]:
  """n-shot accuracy for each n in `shots`, from (features, labels) of both splits.

  With `num_seeds` > 1, the mean accuracy over the draws of seeds seed, seed + 1, ...
  """
  (x_train, y_train), (x_test, y_test) = train, test
  results = {}
  for n in shots:
    accuracies = []
    for s in range(seed, seed + num_seeds):
      idx = select_shots(np.asarray(y_train), n, num_classes, s)
      probe = fit_lsr(x_train[idx], y_train[idx], num_classes, l2_reg)
      accuracies.append(np.mean(np.asarray(predict_lsr(probe, x_test)) == np.asarray(y_test)))
    results[n] = float(np.mean(accuracies))
  return results


def features(apply_fn: Callable[[Any, jax.Array], jax.Array], variables: Mapping[str, Any],
             dataset: Any) -> tuple[np.ndarray, np.ndarray]:
  """(features, labels) of the real (mask=1) examples of an `input_pipeline.eval_dataset`."""
  feats, labels = [], []
  for batch in dataset.as_numpy_iterator():
    keep = batch['mask'] > 0
    feats.append(np.asarray(apply_fn(variables, batch['image']))[keep])
    labels.append(batch['label'][keep])
  return np.concatenate(feats), np.concatenate(labels)


def pre_logits_fn(model: Any) -> Callable[[Mapping[str, Any], jax.Array], jax.Array]:
  """A jitted (variables, images) -> pre-logits features (the model's `features` output).

  The head's logits are not returned, so XLA leaves them out. The variables are an argument, not
  constants of the program: one compilation serves every probe of a run.
  """
  def apply(variables, images):
    _, named, _ = models.apply_with_outputs(model, variables, images)
    return outputs.get(named, outputs.FEATURES, model)
  return jax.jit(apply)


class Probe:
  """The few-shot probe of one job: its data and its compiled feature extractor, built once."""

  def __init__(self, model: Any, train: Any, test: Any, *, shots: Sequence[int], l2_reg: float,
               seed: int, num_seeds: int):
    """`train`, `test`: the eval datasets (`input_pipeline.eval_dataset`) the shots are drawn
    from and the probes scored on; the rest as `probe_accuracies`."""
    self.apply = pre_logits_fn(model)
    self.datasets = (train, test)
    self.shots, self.l2_reg, self.seed, self.num_seeds = tuple(shots), l2_reg, seed, num_seeds

  def __call__(self, variables: Mapping[str, Any]) -> dict[str, float]:
    """`{n}shot` accuracies of the features of `variables` (host or device arrays)."""
    variables = jax.device_put(variables)  # Once, not once per batch.
    train, test = (features(self.apply, variables, ds) for ds in self.datasets)
    num_classes = int(max(train[1].max(), test[1].max())) + 1
    accuracies = probe_accuracies(train, test, num_classes, self.shots, self.l2_reg, self.seed,
                                  self.num_seeds)
    return {f'{n}shot': acc for n, acc in accuracies.items()}
