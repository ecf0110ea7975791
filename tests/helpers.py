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


def make_image_folder(root, splits=(('train', 24), ('test', 10)), num_classes=3, size=32):
  """Writes ROOT/<split>/<class>/*.png: class k is a noisy image with a bright k-th third.

  A tiny dataset that a small model can learn, for machines without the offline CIFAR-10.
  """
  import os  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for split, per_class in splits:
    for label in range(num_classes):
      folder = os.path.join(root, split, f'class_{label}')
      os.makedirs(folder, exist_ok=True)
      for i in range(per_class):
        image = rng.integers(0, 100, (size, size, 3))
        band = size // num_classes
        image[:, label * band:(label + 1) * band] += 150
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(
            os.path.join(folder, f'{i}.png'))
  return root
