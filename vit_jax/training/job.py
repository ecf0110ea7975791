"""The training job, built once: model, optimizer, schedule, state shardings and jitted steps.

`train.train_and_evaluate` runs it, `Job.memory_analysis` compiles it without running it (nothing
is allocated, so compile-only devices serve too), and the benchmarks time it: all three see the
same step with the same shardings, accumulation, dtype and remat. It is built from the job's
settings (`training.settings.prepare`), as they are.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from vit_jax import models
from vit_jax.training import accumulation
from vit_jax.training import optim
from vit_jax.training import sharding
from vit_jax.training import step as step_lib
from vit_jax.training.step import TrainState


@dataclasses.dataclass(frozen=True)
class Job:
  """What one run compiles and how its state is laid out."""
  config: ml_collections.FrozenConfigDict  # The job's settings (`training.settings.prepare`).
  model: nn.Module
  mesh: jax.sharding.Mesh
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  make_state: Callable[..., TrainState]  # (seed key, params, model_state) -> TrainState
  state_shardings: Any
  batch_sharding: jax.sharding.Sharding
  # (state, batch, teacher variables or None) -> (state, metrics); donates the state.
  train_step: Callable[..., tuple[TrainState, dict[str, jax.Array]]]
  eval_step: Callable[[TrainState, dict[str, jax.Array]], dict[str, jax.Array]]

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return (*self.config.image_size, 3)

  def init_state(self, params: Any | None = None, model_state: Any | None = None) -> TrainState:
    """The initial state (given `params` and `model_state` in it), laid out on the mesh."""
    make = jax.jit(self.make_state, out_shardings=self.state_shardings)
    return make(step_lib.seed_key(self.config.seed), params, model_state)

  def abstract_state(self) -> TrainState:
    """The state as `jax.ShapeDtypeStruct`s with their shardings (nothing allocated)."""
    key = jax.eval_shape(lambda: step_lib.seed_key(self.config.seed))
    shapes = jax.eval_shape(self.make_state, key, None, None)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        shapes, self.state_shardings)

  def abstract_batch(self, batch_size: int | None = None) -> dict[str, jax.ShapeDtypeStruct]:
    """A global batch as the input pipeline makes it (image, label, mask), as
    `jax.ShapeDtypeStruct`s with the batch sharding."""
    batch_size = int(batch_size or self.config.batch_size)

    def shaped(shape, dtype):
      return jax.ShapeDtypeStruct(shape, dtype, sharding=self.batch_sharding)
    return {'image': shaped((batch_size, *self.image_shape), jnp.float32),
            'label': shaped((batch_size,), jnp.int32),
            'mask': shaped((batch_size,), jnp.float32)}

  def accumulation_caveats(self) -> list[str]:
    """What the job's `accum_steps` micro-batches compute differently from one batch of
    `batch_size` (`accumulation.caveats`); empty where they compute the same step."""
    return accumulation.caveats(self.config.model_name, self.abstract_state().model_state,
                                self.config.accum_steps)

  def compile_train_step(self) -> Any:
    """The train step compiled for the mesh's devices from shapes alone."""
    with jax.set_mesh(self.mesh):
      return self.train_step.lower(self.abstract_state(), self.abstract_batch(), None).compile()

  def memory_analysis(self) -> dict[str, float]:
    """Per-device bytes of the train step, without running it.

    Parameters and optimizer state are counted from their shardings; XLA's compiled memory
    analysis gives the step's arguments, outputs and temporaries.
    """
    state = self.abstract_state()
    stats = self.compile_train_step().memory_analysis()
    return {
        'params_bytes': per_device_bytes(state.params),
        'opt_state_bytes': per_device_bytes(state.opt_state),
        'argument_bytes': stats.argument_size_in_bytes,
        'output_bytes': stats.output_size_in_bytes,
        'temp_bytes': stats.temp_size_in_bytes,
    }


def per_device_bytes(tree: Any) -> int:
  """Bytes of one device's shard of every leaf of a tree of sharded shapes or arrays."""
  return sum(math.prod(x.sharding.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(tree))


def build(settings: ml_collections.FrozenConfigDict, mesh: jax.sharding.Mesh, *,
          model: nn.Module | None = None, params: Any | None = None,
          model_state: Any | None = None, teacher: nn.Module | None = None) -> Job:
  """The job of `settings` (`training.settings.prepare`, for `mesh`) on `mesh`.

  Args:
    settings: the job's settings.
    mesh: the devices (real or compile-only).
    model: the settings' model where the caller made it already (to load pre-trained
      parameters for it); None: made here.
    params: pre-trained parameters the state will be made with (their shapes decide the
      optimizer's masks); None: fresh ones.
    model_state: pre-trained non-parameter collections, likewise.
    teacher: the distillation teacher's module, if any.
  """
  if model is None:
    model = step_lib.create_model(settings, settings.num_classes)
  shape = (*settings.image_size, 3)
  with jax.set_mesh(mesh):
    param_shapes = (params if params is not None
                    else models.init_shapes(model, settings.image_size)['params'])
    tx, schedule = optim.make_optimizer(settings, param_shapes)
    make, shardings = step_lib.state_factory(settings, model, tx, mesh, shape, params,
                                             model_state)
  batch_sharding = sharding.batch_sharding(mesh)
  replicated = sharding.replicated(mesh)
  train_step = jax.jit(step_lib.make_train_step(model, tx, schedule, settings, mesh, teacher),
                       in_shardings=(shardings, batch_sharding, replicated),
                       out_shardings=(shardings, replicated), donate_argnums=(0,))
  eval_step = jax.jit(step_lib.make_eval_step(model, mesh, settings.loss),
                      in_shardings=(shardings, batch_sharding), out_shardings=replicated)
  return Job(settings, model, mesh, tx, schedule, make, shardings, batch_sharding, train_step,
             eval_step)
