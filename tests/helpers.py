"""Helpers shared by the tests."""

import jax
import numpy as np


def randomize(params, seed: int = 0, scale: float = 0.02):
  """Adds noise to every leaf, so zero-initialised heads and unit norms carry information."""
  leaves, treedef = jax.tree.flatten(params)
  rng = np.random.default_rng(seed)
  noisy = [np.asarray(x) + scale * rng.standard_normal(np.shape(x)).astype(np.float32)
           for x in leaves]
  return jax.tree.unflatten(treedef, noisy)
