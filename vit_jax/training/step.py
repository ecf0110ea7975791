"""The train and eval steps and the train state (no TensorFlow).

`make_train_step` / `make_eval_step` return plain functions; `training.job` jits them with the
state's and batch's shardings, once per job, for the loop, the memory analysis and the benchmarks.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from vit_jax import models
from vit_jax.models import outputs
from vit_jax.training import distill
from vit_jax.training import mixup
from vit_jax.training import sharding


# ---------------------------------------------------------------------------------------------
# Model, state and steps.


@flax.struct.dataclass
class TrainState:
  """Everything a resumed run needs: optimizer steps done, parameters, optimizer and model state."""
  step: jax.Array
  params: Any
  opt_state: Any
  model_state: Any  # Mutable collections other than params, e.g. BatchNorm's batch_stats.
  rng: jax.Array  # Base key (raw uint32[2], storable by Orbax); step keys fold in the step.
  # Exponential moving average of `params` (config.ema_decay > 0), or None.
  ema_params: Any = None
  # The same average of `model_state` (BatchNorm's running statistics), or None: timm's
  # ModelEmaV3 averages the buffers with the parameters, so the EMA model is used as a whole.
  ema_model_state: Any = None


def create_model(config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
  """`config.model_name` with the fields of `config.model` and a `num_classes` head."""
  return models.get_model(config.model_name, num_classes=num_classes, **config.model.to_dict())


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Per-example softmax cross-entropy against (soft) target distributions."""
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def sigmoid_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Per-example sum over classes of independent binary cross-entropies (big_vision's
  `sigmoid_xent`: -sum(y log σ(z) + (1 - y) log σ(-z)))."""
  return jnp.sum(optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), targets), -1)


LOSSES = {'softmax_xent': cross_entropy, 'sigmoid_xent': sigmoid_cross_entropy}


def weighted_mean(values: jax.Array, weights: jax.Array | None) -> jax.Array:
  """The mean of `values` over the examples of weight 1 (over all where `weights` is None).

  With every weight 1 it is bit-identical to `jnp.mean` (x * 1 is exact, the ones sum to B); a
  batch of weight 0 alone gives 0, not NaN.
  """
  if weights is None:
    return jnp.mean(values)
  return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.)


def loss_for(name: str) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """The per-example loss named `name` (`config.loss`)."""
  if name not in LOSSES:
    raise ValueError(f'Unknown config.loss {name!r}; expected one of {sorted(LOSSES)}')
  return LOSSES[name]


def _activation_rules(mesh: jax.sharding.Mesh | None):
  return sharding.activation_rules(mesh) if mesh is not None else ()


def mirror_skipped(x: jax.Array, keep: jax.Array, units: int) -> jax.Array:
  """`x` with the rows where `keep` is False replaced by their mirror rows.

  Skipped rows (images the input pipeline could not decode, weight 0) still go through the model,
  so they take a real example's values. The mirror is taken within each of the `units` blocks
  the batch is split into across devices, so that no device sends its images to another (the
  whole batch reversed moved every device's images each step: a collective-permute of the
  image shard).
  """
  blocks = x.reshape((units, x.shape[0] // units) + x.shape[1:])
  mirrored = blocks[:, ::-1].reshape(x.shape)
  return jnp.where(keep.reshape(keep.shape + (1,) * (x.ndim - 1)), x, mirrored)


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, config: ml_collections.ConfigDict,
                    mesh: jax.sharding.Mesh | None = None, teacher: nn.Module | None = None,
                    ) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
  """The (un-jitted) train step: `accum_steps` micro-batches, one optimizer step.

  With `accum_steps` > 1 the step sums the micro-batches' gradients and applies `tx` once to
  their mean.

  A batch's optional 'mask' marks the examples the input pipeline could not decode (0): they
  weigh nothing in the loss, the accuracy or (with `accum_steps`) their micro-batch's mean, and
  before mixup, BatchNorm or the teacher see them each takes the image and label of a mirror
  partner. With mixup that is row B - 1 - i, the one mixup pairs it with, so a skipped image's
  zeros reach no other example: its partner is mixed with a copy of itself. Without mixup it is
  the mirror row within the device's block of the batch (`mirror_skipped`), which moves nothing
  between devices. The 'skipped' metric counts them.

  `train_step(state, batch)`, or with a DeiT `teacher` `train_step(state, batch,
  teacher_variables)`: the frozen teacher sees the same (mixed) images, and only its logits enter
  the loss. With `mesh`, activations are constrained by `sharding.activation_rules`; the step
  must then be traced under `jax.set_mesh(mesh)`.
  """
  rules = _activation_rules(mesh)
  units = 1 if mesh is None else sharding.batch_size_per_unit(mesh)
  accum = int(config.accum_steps)
  smoothing = float(config.label_smoothing)
  mixup_config = config.mixup
  distillation = config.distillation
  per_example_loss = loss_for(config.loss)
  if teacher is not None and not distillation:
    raise ValueError('A teacher was given but config.distillation is not set')

  def targets_for(labels):
    targets = jax.nn.one_hot(labels, model.num_classes)
    return optax.smooth_labels(targets, smoothing) if smoothing else targets

  def loss_fn(params, model_state, images, targets, labels, weights, teacher_logits,
              dropout_rng):
    with nn.logical_axis_rules(rules):
      logits, named, new_model_state = models.apply_with_outputs(
          model, {'params': params, **model_state}, images, train=True,
          rngs={'dropout': dropout_rng}, mutable=list(model_state))
    if teacher_logits is not None:
      cls_logits, dist_logits = distill.student_logits(named, model)
      loss = distill.distillation_loss(
          cls_logits, dist_logits, targets, teacher_logits, kind=distillation.kind,
          alpha=distillation.alpha, temperature=distillation.temperature, weights=weights)
    elif outputs.DIST_LOGITS in named:
      raise ValueError('A distilled model needs a teacher (config.distillation)')
    else:
      loss = weighted_mean(per_example_loss(logits, targets), weights)
    accuracy = weighted_mean(jnp.argmax(logits, -1) == labels, weights)
    return loss, (accuracy, new_model_state)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  ema_decay = float(config.ema_decay)

  def train_step(state: TrainState, batch: dict[str, jax.Array], teacher_variables: Any = None):
    def forward_backward(params, model_state, xs):
      images, labels, weights, rng = xs
      mix_rng, dropout_rng = jax.random.split(rng)
      if weights is not None:
        blocks = 1 if mixup_config else units  # Mixup's partner is the whole batch's mirror.
        images, labels = (mirror_skipped(x, weights > 0, blocks) for x in (images, labels))
      targets = targets_for(labels)
      if mixup_config:
        images, targets = mixup.mix(mix_rng, images, targets, **mixup_config)
      teacher_logits = None
      if teacher is not None:
        with nn.logical_axis_rules(rules):
          teacher_logits = jax.lax.stop_gradient(
              teacher.apply(teacher_variables, images, train=False))
      (loss, (accuracy, model_state)), grads = grad_fn(
          params, model_state, images, targets, labels, weights, teacher_logits, dropout_rng)
      return grads, model_state, {'loss': loss, 'accuracy': accuracy}

    step_rng = jax.random.fold_in(state.rng, state.step)
    images, labels, weights = batch['image'], batch['label'], batch.get('mask')
    params, opt_state = state.params, state.opt_state
    if accum == 1:
      grads, model_state, metrics = forward_backward(
          params, state.model_state, (images, labels, weights, step_rng))
      updates, opt_state = tx.update(grads, opt_state, params)
    else:
      # Micro-batch j takes rows j, j + k, j + 2k, ...: every device's block of the sharded batch
      # holds rows of every micro-batch, so all devices work in every micro-step.
      def split(x):
        x = x.reshape((x.shape[0] // accum, accum) + x.shape[1:])
        return jnp.swapaxes(x, 0, 1)

      def micro_step(carry, xs):
        grad_sum, model_state = carry
        grads, model_state, metrics = forward_backward(params, model_state, xs)
        return (jax.tree.map(jnp.add, grad_sum, grads), model_state), metrics

      # The loop only sums gradients, so XLA can reduce them across devices once, after it,
      # rather than once per micro-batch; the optimizer then runs once, on their mean.
      zeros = jax.tree.map(jnp.zeros_like, params)
      (grad_sum, model_state), metrics = jax.lax.scan(
          micro_step, (zeros, state.model_state),
          (split(images), split(labels), None if weights is None else split(weights),
           jax.random.split(step_rng, accum)))
      grads = jax.tree.map(lambda g: g / accum, grad_sum)
      metrics = jax.tree.map(jnp.mean, metrics)
      updates, opt_state = tx.update(grads, opt_state, params)
    # The averaged gradient is what clipping sees, so its norm is the one to log.
    metrics['grad_norm'] = optax.global_norm(grads)
    params = optax.apply_updates(params, updates)
    metrics['learning_rate'] = schedule(state.step)
    if weights is not None:
      metrics['skipped'] = jnp.sum(weights == 0)
    ema_params, ema_model_state = state.ema_params, state.ema_model_state
    if ema_params is not None:
      ema_params = optax.incremental_update(params, ema_params, 1. - ema_decay)
    if ema_model_state is not None:
      ema_model_state = jax.tree.map(lambda new, old: ema_update(new, old, ema_decay),
                                     model_state, ema_model_state)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              model_state=model_state, ema_params=ema_params,
                              ema_model_state=ema_model_state)
    return new_state, metrics

  return train_step


def ema_update(new: jax.Array, old: jax.Array, decay: float) -> jax.Array:
  """decay * old + (1 - decay) * new for floats; other leaves (counters) take the new value.

  As timm's ModelEmaV3, which lerps the floating-point entries of the state dict and copies the
  rest.
  """
  if not jnp.issubdtype(new.dtype, jnp.floating):
    return new
  return optax.incremental_update(new, old, 1. - decay)


def make_eval_step(model: nn.Module, mesh: jax.sharding.Mesh | None = None,
                   loss: str | None = None,
                   ) -> Callable[[TrainState, dict[str, jax.Array]], dict[str, jax.Array]]:
  """Sums of top-1/top-5 hits, loss and the example count over the real (mask=1) examples.

  Where the batch has 'skipped' (images the input pipeline could not decode), also its sum.

  The loss is the one named `loss` (`config.loss`; softmax cross-entropy where None).
  """
  rules = _activation_rules(mesh)
  per_example_loss = loss_for(loss) if loss is not None else cross_entropy

  def eval_step(state: TrainState, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    with nn.logical_axis_rules(rules):
      logits = model.apply({'params': state.params, **state.model_state}, batch['image'],
                           train=False)
    labels, mask = batch['label'], batch['mask']
    top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
    loss = per_example_loss(logits, jax.nn.one_hot(labels, logits.shape[-1]))
    return {
        'correct_top1': jnp.sum((top5[:, 0] == labels) * mask),
        'correct_top5': jnp.sum(jnp.any(top5 == labels[:, None], axis=-1) * mask),
        'loss_sum': jnp.sum(loss * mask),
        'count': jnp.sum(mask),
        **({'skipped': jnp.sum(batch['skipped'])} if 'skipped' in batch else {}),
    }

  return eval_step


def init_state(config: ml_collections.ConfigDict, model: nn.Module,
               tx: optax.GradientTransformation, mesh: jax.sharding.Mesh,
               image_shape: tuple[int, int, int], params: Any | None = None,
               model_state: Any | None = None) -> tuple[TrainState, Any]:
  """Initialises (or wraps given `params` into) a TrainState laid out on `mesh`.

  Given `params` (a pre-trained checkpoint) are the state's only parameters; given `model_state`
  (e.g. its BatchNorm statistics) replaces the fresh collections of the same names.
  Returns (state, state_shardings). Parameters are created directly in their sharded layout.
  """
  make, shardings = state_factory(config, model, tx, mesh, image_shape, params, model_state)
  state = jax.jit(make, out_shardings=shardings)(seed_key(config.seed), params, model_state)
  return state, shardings


def seed_key(seed: int) -> jax.Array:
  """The key a run's state is made from (`config.seed`)."""
  return jax.random.PRNGKey(int(seed))


def state_factory(config: ml_collections.ConfigDict, model: nn.Module,
                  tx: optax.GradientTransformation, mesh: jax.sharding.Mesh,
                  image_shape: tuple[int, int, int], params: Any | None = None,
                  model_state: Any | None = None) -> tuple[Callable[..., TrainState], Any]:
  """(make(seed key, params, model_state) -> TrainState, the state's shardings).

  Nothing is created here: the shardings come from the state's shapes alone (the key too is
  abstract), so this also serves compile-only devices.
  """
  def make(key, given_params, given_state):
    init_rng, state_rng = jax.random.split(key)
    dummy = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
    variables = flax.core.unfreeze(
        model.init({'params': init_rng, 'dropout': init_rng}, dummy, train=False))
    # Fresh parameters must never reach model_state: apply({'params': p, **model_state}) would
    # let them override the given (pre-trained) ones, and no gradient would reach those.
    fresh = variables.pop('params')
    variables.pop('intermediates', None)
    p = fresh if given_params is None else given_params
    if given_state:
      variables.update(given_state)
    # The average starts at the initial (or pre-trained) parameters, as in timm's ModelEmaV3.
    ema = jax.tree.map(jnp.copy, p) if config.ema_decay else None
    ema_state = jax.tree.map(jnp.copy, variables) if config.ema_decay else None
    return TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=tx.init(p),
                      model_state=variables, rng=state_rng, ema_params=ema,
                      ema_model_state=ema_state)

  key = jax.eval_shape(lambda: seed_key(config.seed))
  abstract = jax.eval_shape(make, key, params, model_state)
  shardings = sharding.tree_shardings(abstract, mesh, tuple(config.sharding_rules))
  return make, shardings
