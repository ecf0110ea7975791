"""What a trained ViT looks at: attention maps, attention rollout, embedding structure.

Numbers only (NumPy arrays); `visualize` draws them. Attention weights come out of the model
itself: built with `sow_weights=True`, every `MultiHeadDotProductAttention` sows its softmax
weights into the 'intermediates' collection, which `apply(..., mutable=['intermediates'])`
returns next to the logits.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import numpy as np

from vit_jax import checkpoint

_MHA = 'MultiHeadDotProductAttention_1'


def attention_weights(model: nn.Module, params: Mapping[str, Any],
                      images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Runs a ViT and returns (logits, attention weights of every encoder layer).

  Args:
    model: a `VisionTransformer` built with `sow_weights=True` (plain or scanned encoder).
    params: its parameters.
    images: (batch, height, width, 3) model inputs.

  Returns:
    logits (or features) as the model returns them, and weights of shape
    (layers, batch, heads, tokens, tokens): row q holds what query token q attends to, and sums
    to 1.

  Raises:
    ValueError: the model sowed no encoder attention weights (built without sow_weights=True).
  """
  if getattr(model, 'sow_weights', None) is False:
    raise ValueError('The model sows no attention weights; build it with sow_weights=True')
  logits, state = jax.jit(lambda p, x: model.apply(
      {'params': p}, x, train=False, mutable=['intermediates']))(params, images)
  flat = checkpoint.flatten(state.get('intermediates', {}))
  # Sown values are tuples (one entry per call), which flatten leaves as leaves.
  per_layer: dict[int, np.ndarray] = {}
  for key, value in flat.items():
    path = key.split('/')
    if path[0] != 'Transformer' or _MHA not in path or path[-1] != 'attention_weights':
      continue  # MAPHead attention and anything else that sows.
    (weights,) = value
    if path[1] == 'encoderblock':  # Scanned encoder: layers stacked on axis 0.
      return np.asarray(logits), np.asarray(weights)
    per_layer[int(path[1].rsplit('_', 1)[1])] = np.asarray(weights)
  if not per_layer:
    raise ValueError('The model sowed no attention weights; build it with sow_weights=True')
  return np.asarray(logits), np.stack([per_layer[i] for i in sorted(per_layer)])


def attention_rollout(weights: np.ndarray, residual: float = 0.5) -> np.ndarray:
  """Attention rollout (Abnar & Zuidema 2020): how much each output token draws on each input.

  Per layer the heads are averaged and the residual connection is modelled by mixing in the
  identity, A' = (1 - residual) * A + residual * I, whose rows are renormalised to sum to 1;
  the layers then compose by matrix products, R = A'_L ... A'_2 A'_1.

  Args:
    weights: (layers, batch, heads, tokens, tokens) attention weights.
    residual: weight of the identity; 0.5 (the paper's) adds I to A and halves.

  Returns:
    (batch, tokens, tokens) rollout whose rows sum to 1.
  """
  weights = np.asarray(weights, np.float64)
  if weights.ndim != 5 or weights.shape[-1] != weights.shape[-2]:
    raise ValueError('Expected (layers, batch, heads, tokens, tokens) weights, got shape '
                     f'{weights.shape}')
  tokens = weights.shape[-1]
  eye = np.eye(tokens)
  rollout = np.broadcast_to(eye, (weights.shape[1], tokens, tokens))
  for layer in weights:
    mixed = (1. - residual) * layer.mean(axis=1) + residual * eye
    mixed /= mixed.sum(axis=-1, keepdims=True)
    rollout = mixed @ rollout  # The later layer acts on what the earlier ones mixed.
  return rollout


def token_grid(num_tokens: int, num_prefix: int,
               grid: tuple[int, int] | None = None) -> tuple[int, int]:
  """The (h, w) patch grid behind `num_tokens` tokens, of which `num_prefix` precede the grid."""
  n = num_tokens - num_prefix
  if grid is not None:
    if grid[0] * grid[1] != n:
      raise ValueError(f'Grid {grid} does not hold {n} tokens')
    return tuple(grid)
  side = math.isqrt(n)
  if side * side != n:
    raise ValueError(f'{n} tokens are not a square grid; pass the grid')
  return side, side


def maps_from_attention(attention: np.ndarray, num_prefix: int,
                        grid: tuple[int, int] | None = None) -> np.ndarray:
  """Turns (..., tokens, tokens) attention into (..., h, w) maps over the patch grid.

  With a class token (num_prefix 1) the map is its row: what [CLS] attends to. Without one (gap
  models) it is the mean over all query rows, matching how the head pools the tokens.
  """
  attention = np.asarray(attention)
  h, w = token_grid(attention.shape[-1], num_prefix, grid)
  rows = attention[..., 0, :] if num_prefix else attention.mean(axis=-2)
  return rows[..., num_prefix:].reshape(*rows.shape[:-1], h, w)


def posemb_similarity(posemb: np.ndarray, num_prefix: int,
                      grid: tuple[int, int] | None = None) -> np.ndarray:
  """Cosine similarity of every grid position's embedding with every other one.

  Args:
    posemb: (1, prefix + h * w, D) learned position embedding.
    num_prefix: rows before the grid (1 with a class token).
    grid: (h, w) when not square.

  Returns:
    (h, w, h, w): [i, j] is the similarity map of position (i, j) with the whole grid, as in
    Figure 7 (centre) of the ViT paper.
  """
  posemb = np.asarray(posemb, np.float64)
  if posemb.ndim == 3:
    posemb = posemb[0]
  h, w = token_grid(posemb.shape[0], num_prefix, grid)
  rows = posemb[num_prefix:]
  unit = rows / np.maximum(np.linalg.norm(rows, axis=-1, keepdims=True), 1e-12)
  return (unit @ unit.T).reshape(h, w, h, w)


def embedding_components(kernel: np.ndarray, count: int = 28) -> tuple[np.ndarray, np.ndarray]:
  """Principal components of the patch-embedding filters (ViT paper, Figure 7 left).

  Each of the D output channels is one linear filter over a (ph, pw, 3) patch; the principal
  components of those D filters are the patch patterns the embedding is most sensitive to.

  Args:
    kernel: (ph, pw, channels, D) embedding kernel.
    count: number of components.

  Returns:
    (components (count, ph, pw, channels) with unit norm, explained variance ratio (count,)).
  """
  kernel = np.asarray(kernel, np.float64)
  if kernel.ndim != 4:
    raise ValueError(f'Expected a (ph, pw, channels, D) kernel, got shape {kernel.shape}')
  filters = kernel.reshape(-1, kernel.shape[-1]).T  # (D, ph * pw * channels)
  filters = filters - filters.mean(axis=0)
  _, singular, components = np.linalg.svd(filters, full_matrices=False)
  count = min(count, len(singular))
  variance = singular**2
  return (components[:count].reshape(count, *kernel.shape[:3]),
          variance[:count] / variance.sum())
