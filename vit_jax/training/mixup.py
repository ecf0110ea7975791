"""Batch-level mixup and cutmix in JAX (timm's `Mixup` in 'batch' mode), jit-able.

One mixing coefficient per batch: each image is mixed with the image at the mirrored position of
the batch (`x[::-1]`), so no second batch is needed. With both alphas positive, each batch uses
cutmix with probability `switch_prob`, else mixup. Targets are soft: label smoothing, then the
same mixing as the images, with cutmix's coefficient corrected to the pasted box's true area.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def smooth_targets(labels: Array, num_classes: int | None = None,
                   label_smoothing: float = 0.) -> Array:
  """Integer labels (B,) or one-hot / soft targets (B, K) -> smoothed (B, K) float32 targets.

  Smoothing moves `label_smoothing` of the mass uniformly over all K classes (timm: off value
  s / K, on value 1 - s + s / K).
  """
  if labels.ndim == 1:
    if num_classes is None:
      raise ValueError('Integer labels need num_classes')
    targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  elif labels.ndim == 2:
    if num_classes is not None and labels.shape[1] != num_classes:
      raise ValueError(f'Targets have {labels.shape[1]} classes, num_classes is {num_classes}')
    targets = labels.astype(jnp.float32)
  else:
    raise ValueError(f'Labels must be (B,) integers or (B, K) targets, got shape {labels.shape}')
  if label_smoothing:
    targets = targets * (1. - label_smoothing) + label_smoothing / targets.shape[1]
  return targets


def cutmix_box(rng: Array, lam: Array, height: int, width: int) -> tuple[Array, Array]:
  """A box of about (1 - lam) of the image, centred uniformly, clipped at the borders.

  As timm's `rand_bbox`: sides int(H * sqrt(1 - lam)) and int(W * sqrt(1 - lam)), centre drawn
  uniformly over all pixels; the part outside the image is cut off, so the box may be smaller.

  Returns:
    (mask, area): mask (H, W) bool, True inside the box; area its fraction of the image.
  """
  ratio = jnp.sqrt(1. - lam)
  cut_h = jnp.floor(height * ratio).astype(jnp.int32)
  cut_w = jnp.floor(width * ratio).astype(jnp.int32)
  rng_y, rng_x = jax.random.split(rng)
  cy = jax.random.randint(rng_y, (), 0, height)
  cx = jax.random.randint(rng_x, (), 0, width)
  top, bottom = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height)
  left, right = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width)
  rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
  mask = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
  area = (bottom - top) * (right - left) / (height * width)
  return mask, area


def mix(rng: Array, images: Array, labels: Array, *, mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0, switch_prob: float = 0.5, prob: float = 1.0,
        label_smoothing: float = 0., num_classes: int | None = None) -> tuple[Array, Array]:
  """Mixes a batch with its reverse by mixup or cutmix; returns (images, soft targets).

  Args:
    rng: PRNG key; the same key gives the same mixing.
    images: (B, H, W, C). Integer images are mixed as float32.
    labels: (B,) integer labels (then `num_classes` is required) or (B, K) one-hot or already
      smoothed targets.
    mixup_alpha: Beta(alpha, alpha) parameter of mixup; 0 disables mixup.
    cutmix_alpha: Beta(alpha, alpha) parameter of cutmix's area; 0 disables cutmix.
    switch_prob: probability of cutmix rather than mixup when both are enabled.
    prob: probability of mixing this batch at all (timm `mix_prob`).
    label_smoothing: applied to the targets before mixing (leave 0 for already smoothed ones).
    num_classes: K, needed for integer labels.

  Returns:
    (mixed images of the input float dtype, (B, K) float32 targets whose rows sum to 1).
  """
  if images.ndim != 4:
    raise ValueError(f'mix expects (B, H, W, C) images, got shape {images.shape}')
  if labels.shape[0] != images.shape[0]:
    raise ValueError(f'{images.shape[0]} images but {labels.shape[0]} labels')
  if mixup_alpha < 0 or cutmix_alpha < 0 or not 0 <= switch_prob <= 1 or not 0 <= prob <= 1:
    raise ValueError(f'Bad mixup settings: mixup_alpha {mixup_alpha}, cutmix_alpha '
                     f'{cutmix_alpha}, switch_prob {switch_prob}, prob {prob}')
  targets = smooth_targets(labels, num_classes, label_smoothing)
  if not jnp.issubdtype(images.dtype, jnp.floating):
    images = images.astype(jnp.float32)
  if mixup_alpha == 0 and cutmix_alpha == 0:
    return images, targets

  rng_apply, rng_switch, rng_mixup, rng_cutmix, rng_box = jax.random.split(rng, 5)
  if mixup_alpha > 0 and cutmix_alpha > 0:
    use_cutmix = jax.random.uniform(rng_switch) < switch_prob
  else:
    use_cutmix = jnp.asarray(cutmix_alpha > 0)
  # Beta(0, 0) is undefined: a disabled method's draw is computed at alpha 1 and never used.
  lam_mixup = jax.random.beta(rng_mixup, mixup_alpha or 1., mixup_alpha or 1.)
  lam_cutmix = jax.random.beta(rng_cutmix, cutmix_alpha or 1., cutmix_alpha or 1.)
  _, height, width, _ = images.shape
  box, area = cutmix_box(rng_box, lam_cutmix, height, width)
  apply = jax.random.uniform(rng_apply) < prob

  flipped = images[::-1]
  mixed = jnp.where(use_cutmix, jnp.where(box[None, :, :, None], flipped, images),
                    lam_mixup * images + (1. - lam_mixup) * flipped)
  lam = jnp.where(use_cutmix, 1. - area, lam_mixup)
  images = jnp.where(apply, mixed, images).astype(images.dtype)
  lam = jnp.where(apply, lam, 1.).astype(jnp.float32)
  return images, lam * targets + (1. - lam) * targets[::-1]
