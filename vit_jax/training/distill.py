"""DeiT distillation (Touvron et al. 2021): a frozen teacher supervises the distillation token.

The student is a VisionTransformer with `distilled=True`: a second learnable token `dist` next to
`cls`, with its own head. It returns the two heads' average in every mode; the train step reads
each head's logits by name (`models.outputs`: `cls_logits` learns the labels, `dist_logits` the
teacher). The teacher is any zoo model with an `.npz` checkpoint; its variables enter the jitted
train step as a separate argument, so they are never differentiated, updated or saved.
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from vit_jax import models
from vit_jax.checkpoint.errors import CheckpointError
from vit_jax.models import loader
from vit_jax.models import outputs


def per_example_loss(cls_logits: jax.Array, dist_logits: jax.Array, targets: jax.Array,
                     teacher_logits: jax.Array, kind: str = 'hard', alpha: float = 0.5,
                     temperature: float = 1.0) -> jax.Array:
  """(1 - alpha) * CE(cls, targets) + alpha * the distillation term, per example (B,).

  The train step takes their weighted mean over the whole batch (`step.forward_backward`), as
  for every loss, so that skipped images and accumulation are handled in one place.

  'hard': CE(dist, one-hot argmax of the teacher) — the paper's best. 'soft': DeiT's
  `kl_div(..., reduction='sum') * T^2 / numel`, i.e. T^2 * KL(softmax(teacher / T) ||
  softmax(dist / T)) summed over the batch and divided by batch x classes (B * K), not by B:
  per example, KL / K, whose batch mean is DeiT's sum / (B * K).
  """
  teacher_logits = jax.lax.stop_gradient(teacher_logits.astype(jnp.float32))
  base = optax.softmax_cross_entropy(cls_logits.astype(jnp.float32), targets)
  if kind == 'hard':
    teacher_labels = jax.nn.one_hot(jnp.argmax(teacher_logits, -1), dist_logits.shape[-1])
    distill = optax.softmax_cross_entropy(dist_logits.astype(jnp.float32), teacher_labels)
  elif kind == 'soft':
    t = temperature
    distill = t**2 / dist_logits.shape[-1] * optax.kl_divergence(
        jax.nn.log_softmax(dist_logits.astype(jnp.float32) / t), jax.nn.softmax(teacher_logits / t))
  else:
    raise ValueError(f"Unknown config.distillation.kind {kind!r}; expected 'hard' or 'soft'")
  return (1. - alpha) * base + alpha * distill


def student_logits(named: Mapping[str, jax.Array], model: nn.Module
                   ) -> tuple[jax.Array, jax.Array]:
  """(class-token logits, distillation-token logits) from a student's named outputs.

  Raises:
    ValueError: the student has no distillation head (config.model.distilled is not set).
  """
  if outputs.DIST_LOGITS not in named:
    raise ValueError('config.distillation needs a distilled student (config.model.distilled = '
                     f'True); {getattr(model, "model_name", None) or type(model).__name__} has no '
                     'distillation head')
  return named[outputs.CLS_LOGITS], named[outputs.DIST_LOGITS]


def load_teacher(dist: ml_collections.ConfigDict, image_size: int | tuple[int, int],
                 num_classes: int) -> tuple[nn.Module, Any]:
  """The teacher of `dist` (`config.distillation`): (model, variables) from its model file.

  `teacher_path` is any file the one loader reads (`models.loader`: `.npz`, timm, HF), with the
  state sidecar of a training export where the model has BatchNorm statistics; the model is
  built with `teacher_overrides` for `image_size` images.

  Raises:
    FileNotFoundError: nothing at `teacher_path`.
    CheckpointError: the file does not give `teacher_model` with a `num_classes` head.
  """
  loaded = loader.load(dist.teacher_path, dist.teacher_model, image_size=image_size,
                       **dist.teacher_overrides.to_dict())
  if loaded.model.num_classes != num_classes:
    raise CheckpointError(f'The teacher {dist.teacher_path} has {loaded.model.num_classes} '
                          f'classes; the student is trained on {num_classes}')
  return loaded.model, loaded.variables


def abstract_teacher(dist: ml_collections.ConfigDict, image_size: int | tuple[int, int],
                     num_classes: int) -> tuple[nn.Module, Any]:
  """`load_teacher`'s (model, variables) as shapes, from the zoo alone (no file is read).

  For compiling a distillation step ahead of time (`vit_jax.aot`): the module is built as the
  loader builds it (`teacher_model` with `teacher_overrides`), its variables are
  `jax.ShapeDtypeStruct`s.
  """
  model = models.get_model(dist.teacher_model, num_classes=num_classes,
                           **dist.teacher_overrides.to_dict())
  size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
  return model, models.init_shapes(model, size)
