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
from vit_jax.training import accumulation
from vit_jax.training import distill
from vit_jax.training import mixup as mixup_lib
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


def weighted_sum(values: jax.Array, weights: jax.Array | None) -> jax.Array:
  """The sum of `values` (float32) over the examples of weight 1 (over all where None)."""
  values = values.astype(jnp.float32)
  return jnp.sum(values) if weights is None else jnp.sum(values * weights)


def batch_weight(weights: jax.Array | None, batch_size: int) -> jax.Array:
  """What a batch's weighted sums are divided by: its examples of weight 1, at least 1 (a
  batch of weight 0 alone gives 0, not NaN), or `batch_size` where there are no weights.

  Computed over the whole batch, never a micro-batch, so that every `accum_steps` divides by the
  same number. With every weight 1, sum / weight is bit-identical to `jnp.mean`.
  """
  if weights is None:
    return jnp.float32(batch_size)
  return jnp.maximum(jnp.sum(weights), 1.)


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


def prepare_batch(batch: dict[str, jax.Array], rng: jax.Array, *, num_classes: int,
                  label_smoothing: float = 0., mixup: Any = None, units: int = 1
                  ) -> dict[str, jax.Array]:
  """The whole batch as the loss sees it: 'image', 'label', 'targets' and (if given) 'mask'.

  A batch's optional 'mask' marks the examples the input pipeline could not decode (0); before
  mixup, BatchNorm or the teacher see them each takes the image and label of a mirror partner.
  With mixup (`mixup`: `mixup.mix`'s settings) that is row B - 1 - i, the one mixup pairs it
  with, so a skipped image's zeros reach no other example: its partner is mixed with a copy of
  itself. Without mixup it is the mirror row within each of the `units` device blocks
  (`mirror_skipped`), which moves nothing between devices. Targets are one-hot, smoothed by
  `label_smoothing`, then mixed with the images (`rng`). Done once for the whole batch, before
  any split into micro-batches, so that the pairs and the coefficient are those of one batch.
  """
  images, labels, weights = batch['image'], batch['label'], batch.get('mask')
  if weights is not None:
    blocks = 1 if mixup else units  # Mixup's partner is the whole batch's mirror.
    images, labels = (mirror_skipped(x, weights > 0, blocks) for x in (images, labels))
  targets = jax.nn.one_hot(labels, num_classes)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  if mixup:
    images, targets = mixup_lib.mix(rng, images, targets, **mixup)
  examples = {'image': images, 'label': labels, 'targets': targets}
  if weights is not None:
    examples['mask'] = weights
  return examples


# (logits, named outputs, targets, teacher logits or None) -> per-example losses (B,).
Objective = Callable[[jax.Array, dict[str, jax.Array], jax.Array, jax.Array | None], jax.Array]


def objective_for(config: ml_collections.ConfigDict, model: nn.Module,
                  teacher: nn.Module | None = None) -> Objective:
  """The per-example loss the train step minimises: `config.loss`, or with a DeiT `teacher`
  `distill.per_example_loss` (`config.distillation`).

  Raises:
    ValueError: a teacher without `config.distillation`; at trace time, a distilled model
      without a teacher (or a teacher without a distilled model).
  """
  distillation = config.distillation
  if teacher is not None and not distillation:
    raise ValueError('A teacher was given but config.distillation is not set')
  per_example_loss = loss_for(config.loss)

  def objective(logits, named, targets, teacher_logits):
    if teacher_logits is not None:
      cls_logits, dist_logits = distill.student_logits(named, model)
      return distill.per_example_loss(
          cls_logits, dist_logits, targets, teacher_logits, kind=distillation.kind,
          alpha=distillation.alpha, temperature=distillation.temperature)
    if outputs.DIST_LOGITS in named:
      raise ValueError('A distilled model needs a teacher (config.distillation)')
    return per_example_loss(logits, targets)

  return objective


def forward_backward(model: nn.Module, params: Any, model_state: Any,
                     examples: dict[str, jax.Array], rng: jax.Array, *, objective: Objective,
                     total_weight: jax.Array, rules: Any = (), teacher: nn.Module | None = None,
                     teacher_variables: Any = None) -> tuple[Any, Any, dict[str, jax.Array]]:
  """One (micro-)batch's share of the whole batch's loss, and its gradients.

  Args:
    model: the trained model, applied with `train=True`.
    params: what is differentiated.
    model_state: the other collections (BatchNorm's `batch_stats`), updated by the call.
    examples: `prepare_batch`'s output, or a micro-batch of it.
    rng: the dropout key.
    objective: per-example losses (`objective_for`).
    total_weight: the whole batch's `batch_weight`: the loss is the weighted sum of this
      (micro-)batch's per-example losses over it, so micro-batches' losses and gradients add up
      to the whole batch's.
    rules: flax logical-axis rules for the activations.
    teacher: a frozen DeiT teacher: it sees the same (mixed) images; only its logits enter the
      loss.
    teacher_variables: its variables.

  Returns:
    (gradients, new model state, {'loss', 'accuracy'}: shares of the whole batch's).
  """
  images, weights = examples['image'], examples.get('mask')
  teacher_logits = None
  if teacher is not None:
    with nn.logical_axis_rules(rules):
      teacher_logits = jax.lax.stop_gradient(
          teacher.apply(teacher_variables, images, train=False))

  def loss_fn(params):
    with nn.logical_axis_rules(rules):
      logits, named, new_state = models.apply_with_outputs(
          model, {'params': params, **model_state}, images, train=True,
          rngs={'dropout': rng}, mutable=list(model_state))
    loss = objective(logits, named, examples['targets'], teacher_logits)
    loss = weighted_sum(loss, weights) / total_weight
    hits = jnp.argmax(logits, -1) == examples['label']
    return loss, (weighted_sum(hits, weights) / total_weight, new_state)

  (loss, (accuracy, new_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  return grads, new_state, {'loss': loss, 'accuracy': accuracy}


def ema_update(new: Any, old: Any, decay: float) -> Any:
  """decay * old + (1 - decay) * new for every float leaf; other leaves (counters) take the new
  value.

  As timm's ModelEmaV3, which lerps the floating-point entries of the state dict (parameters
  and BatchNorm statistics) and copies the rest.
  """
  def leaf(n, o):
    if not jnp.issubdtype(n.dtype, jnp.floating):
      return n
    return optax.incremental_update(n, o, 1. - decay)
  return jax.tree.map(leaf, new, old)


def step_keys(step_rng: jax.Array, accum_steps: int) -> tuple[jax.Array, jax.Array]:
  """(the mixup key of the whole batch, one dropout key per micro-batch) of a step's key.

  Micro-batch j has key k_j (the step's key itself without accumulation, else its j-th split),
  split into two: the second is its dropout key; the first of k_0 mixes the whole batch.
  """
  if accum_steps == 1:
    mix_rng, dropout_rng = jax.random.split(step_rng)
    return mix_rng, dropout_rng[None]
  keys = jax.random.split(step_rng, accum_steps)
  return jax.random.split(keys[0])[0], jax.vmap(lambda k: jax.random.split(k)[1])(keys)


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, config: ml_collections.ConfigDict,
                    mesh: jax.sharding.Mesh | None = None, teacher: nn.Module | None = None,
                    ) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
  """The (un-jitted) train step: `config.accum_steps` micro-batches, one optimizer step.

  The whole batch is prepared once (`prepare_batch`: skipped rows, targets, mixup), its loss
  computed in `accum_steps` micro-batches (`forward_backward`, `accumulation.accumulate`) that
  add up to the whole batch's loss and gradient, `tx` applied once, and the weight EMA updated
  (`ema_update`). Skipped examples (mask 0) weigh nothing in the loss or the accuracy, whatever
  micro-batch they fall in; the 'skipped' metric counts them.

  `train_step(state, batch)`, or with a DeiT `teacher` `train_step(state, batch,
  teacher_variables)`. With `mesh`, activations are constrained by `sharding.activation_rules`;
  the step must then be traced under `jax.set_mesh(mesh)`.
  """
  rules = _activation_rules(mesh)
  units = 1 if mesh is None else sharding.batch_size_per_unit(mesh)
  accum = int(config.accum_steps)
  objective = objective_for(config, model, teacher)
  ema_decay = float(config.ema_decay)
  bn_momentum = getattr(model, 'bn_momentum', None)

  def train_step(state: TrainState, batch: dict[str, jax.Array], teacher_variables: Any = None):
    mix_rng, dropout_rngs = step_keys(jax.random.fold_in(state.rng, state.step), accum)
    examples = prepare_batch(batch, mix_rng, num_classes=model.num_classes,
                             label_smoothing=float(config.label_smoothing),
                             mixup=config.mixup, units=units)
    total_weight = batch_weight(examples.get('mask'), examples['image'].shape[0])

    def micro_step(params, model_state, micro, rng):
      return forward_backward(model, params, model_state, micro, rng, objective=objective,
                              total_weight=total_weight, rules=rules, teacher=teacher,
                              teacher_variables=teacher_variables)

    if accum == 1:
      grads, model_state, metrics = micro_step(state.params, state.model_state, examples,
                                               dropout_rngs[0])
    else:
      grads, model_state, metrics = accumulation.accumulate(
          micro_step, state.params, state.model_state, examples, dropout_rngs, bn_momentum)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics['grad_norm'] = optax.global_norm(grads)  # What clipping sees.
    metrics['learning_rate'] = schedule(state.step)
    if 'mask' in examples:
      metrics['skipped'] = jnp.sum(examples['mask'] == 0)
    ema_params, ema_model_state = state.ema_params, state.ema_model_state
    if ema_params is not None:
      ema_params = ema_update(params, ema_params, ema_decay)
    if ema_model_state is not None:
      ema_model_state = ema_update(model_state, ema_model_state, ema_decay)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              model_state=model_state, ema_params=ema_params,
                              ema_model_state=ema_model_state)
    return new_state, metrics

  return train_step


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
