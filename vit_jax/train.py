"""Training and evaluation: one jitted, sharded train step, Orbax checkpoints, exact resume.

`train_and_evaluate(config, workdir)` is the whole job: data → model (optionally from a
pre-trained `.npz`) → steps on the device mesh → TensorBoard metrics, a log file, checkpoints
every `checkpoint_every` steps (the last `keep_checkpoints` kept) and an original-format `.npz` of
the final parameters. A run restarted on the same workdir resumes from its last checkpoint and
ends with the same parameters as an uninterrupted run: the step's dropout key is
fold_in(seed key, step) and the input stream is a function of the step.
"""

from __future__ import annotations

import contextlib
import json
import logging as py_logging
import math
import os
import sys
import time
from typing import Any, Callable, Iterator

from absl import logging
from clu import metric_writers
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vit_jax import checkpoint
from vit_jax import distill
from vit_jax import families
from vit_jax import fewshot
from vit_jax import input_pipeline
from vit_jax import models
from vit_jax import optim
from vit_jax import preprocess
from vit_jax import sharding
from vit_jax import workdir as workdir_lib
from vit_jax.step import TrainState, create_model, init_state, make_eval_step, make_train_step


# ---------------------------------------------------------------------------------------------
# The job.


def load_pretrained_state(config: ml_collections.ConfigDict, model: nn.Module,
                          image_shape: tuple[int, int, int]) -> Any | None:
  """The non-parameter variables exported beside `config.pretrained_path` (BatchNorm
  statistics), checked against `model`; None where the file has none or the model needs none."""
  saved = workdir_lib.read_state(config.pretrained_path)
  shapes = models.init_shapes(model, image_shape[:2])
  wanted = {k: v for k, v in shapes.items() if k != 'params'}
  if not saved or not wanted:
    return None
  missing = sorted(set(wanted) - set(saved))
  if missing:
    raise checkpoint.CheckpointError(f'{workdir_lib.state_path_for(config.pretrained_path)} lacks '
                                     f'the collections {missing} of {config.model_name}')
  return {k: checkpoint.inspect_params(params=saved[k], expected=wanted[k]) for k in wanted}


def load_pretrained_params(config: ml_collections.ConfigDict, model: nn.Module,
                           image_shape: tuple[int, int, int]) -> Any:
  """`config.pretrained_path` prepared for `model` at `image_shape` (host numpy arrays)."""
  # The fresh head comes from the model's own initialiser (zeros by default), so this one init
  # computes values rather than only shapes.
  init_params = jax.device_get(jax.jit(lambda: model.init(
      jax.random.PRNGKey(int(config.seed)), jnp.zeros((1,) + image_shape), train=False))()
                               ['params'])
  family = families.of_model(config.model_name)
  params = family.load_pretrained(
      config.pretrained_path, init_params, model, image_shape,
      posemb_resize=config.get('posemb_resize', 'zoom'),
      resample_patch_embedding=bool(config.get('resample_patch_embedding', False)))
  logging.info('Loaded pre-trained parameters from %s', config.pretrained_path)
  return params


def _validate(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> None:
  """Checks that need no data or compute, so bad configs fail in seconds."""
  units = sharding.batch_size_per_unit(mesh)
  accum = int(config.get('accum_steps', 1))
  for field in ('batch_size', 'eval_batch_size'):
    value = int(config[field])
    if value <= 0 or value % units or value % jax.process_count():
      raise ValueError(f'config.{field}={value} is not divisible by the {units} devices the '
                       f'batch is split over (mesh {dict(mesh.shape)}) and the '
                       f'{jax.process_count()} processes')
  if accum < 1 or config.batch_size % (accum * units):
    raise ValueError(f'config.batch_size={config.batch_size} is not divisible by '
                     f'accum_steps ({accum}) x {units} devices')
  if config.get('pretrained_path') and not os.path.exists(config.pretrained_path):
    raise FileNotFoundError(f'config.pretrained_path not found: {config.pretrained_path}')


@contextlib.contextmanager
def _log_file(workdir: str) -> Iterator[None]:
  """Copies the log into WORKDIR/train.<process>.log while the job runs, and only then: a second
  job in the same process (a sweep, a notebook) writes to its own file, not to this one."""
  os.makedirs(workdir, exist_ok=True)
  handler = py_logging.FileHandler(os.path.join(workdir, f'train.{jax.process_index()}.log'))
  handler.setFormatter(py_logging.Formatter('%(asctime)s %(levelname)s %(message)s'))
  handler.addFilter(_quiet_libraries)
  root = py_logging.getLogger()
  root.addHandler(handler)
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_quiet_libraries)
  try:
    yield
  except Exception:
    # The traceback goes to the file only: the console gets it from the exception itself.
    handler.handle(root.makeRecord(root.name, py_logging.ERROR, __file__, 0,
                                   'The job stopped with an error:', (), sys.exc_info()))
    raise
  finally:
    root.removeHandler(handler)
    handler.close()


def _quiet_libraries(record: py_logging.LogRecord) -> bool:
  """Keeps Orbax's per-save INFO chatter out of the console and the log file."""
  return record.levelno >= py_logging.WARNING or '/orbax/' not in record.pathname


def evaluate(eval_step: Callable, state: TrainState, config: ml_collections.ConfigDict,
             source: input_pipeline.Source, batch_sharding: Any,
             dataset: tuple[Any, int] | None = None) -> dict[str, float]:
  """Top-1/top-5 accuracy and loss over every example of the eval split, exactly once.

  `dataset`: the (dataset, number of batches) of `input_pipeline.eval_dataset`, if built already.
  """
  local_batch = config.eval_batch_size // jax.process_count()
  ds, num_batches = dataset or input_pipeline.eval_dataset(config, source, local_batch)
  totals = None
  for batch in input_pipeline.prefetch_to_mesh(ds.as_numpy_iterator(), batch_sharding):
    sums = eval_step(state, batch)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  count = float(totals['count'])
  metrics = {'eval_accuracy': float(totals['correct_top1']) / count,
             'eval_top5_accuracy': float(totals['correct_top5']) / count,
             'eval_loss': float(totals['loss_sum']) / count,
             'eval_examples': count, 'eval_batches': num_batches}
  if 'skipped' in totals:
    metrics['eval_skipped'] = float(totals['skipped'])
  return metrics


def _check_finite(step: int, loss: jax.Array) -> None:
  value = float(loss)
  if not math.isfinite(value):
    raise FloatingPointError(f'Loss is {value} at step {step}; stopping without saving the state '
                             'of that step (the last checkpoint is intact)')


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains `config` in `workdir` (resuming from its last checkpoint) and evaluates.

  Returns the final evaluation metrics (and the last training metrics).
  """
  with _log_file(workdir):
    mesh = sharding.make_mesh(config.mesh)
    _validate(config, mesh)
    with jax.set_mesh(mesh):
      return _train_and_evaluate(config, workdir, mesh)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                        mesh: jax.sharding.Mesh) -> dict[str, float]:
  train_source = input_pipeline.get_source(config, config.train_split)
  eval_source = input_pipeline.get_source(config, config.eval_split)
  num_classes = config.num_classes or train_source.num_classes
  if num_classes < train_source.num_classes:
    raise ValueError(f'config.num_classes={num_classes} but {config.dataset} has '
                     f'{train_source.num_classes} classes')
  total_steps = int(config.total_steps)
  if config.get('num_epochs'):
    total_steps = math.ceil(config.num_epochs * train_source.num_examples *
                            jax.process_count() / config.batch_size)
    config = ml_collections.ConfigDict(config.to_dict())
    config.total_steps = total_steps

  model = create_model(config, num_classes)
  image_shape = (config.image_size, config.image_size, 3) if isinstance(
      config.image_size, int) else tuple(config.image_size) + (3,)
  # The eval pipeline is built (not run) before any step, so that a preprocessing that does not
  # fit the model fails now, not after the first `eval_every` steps.
  eval_data = input_pipeline.eval_dataset(config, eval_source,
                                          config.eval_batch_size // jax.process_count())
  params, pretrained_state = None, None
  if config.get('pretrained_path'):
    params = load_pretrained_params(config, model, image_shape)
    pretrained_state = load_pretrained_state(config, model, image_shape)
  param_shapes = params if params is not None else models.init_shapes(
      model, image_shape[:2])['params']
  tx, schedule = optim.make_optimizer(config, param_shapes)
  state, state_shardings = init_state(config, model, tx, mesh, image_shape, params,
                                      pretrained_state)
  batch_sharding = sharding.batch_sharding(mesh)
  if jax.process_index() == 0:
    sharding.report(state.params, state_shardings.params)

  teacher, teacher_variables = None, None
  if config.get('distillation'):
    teacher, teacher_variables = distill.load_teacher(config, num_classes)
    teacher_variables = jax.device_put(teacher_variables, sharding.replicated(mesh))
    logging.info('Distilling from %s (%s)', config.distillation.teacher_model,
                 config.distillation.teacher_path)
  jitted_step = jax.jit(make_train_step(model, tx, schedule, config, mesh, teacher),
                        in_shardings=(state_shardings, batch_sharding, sharding.replicated(mesh)),
                        out_shardings=(state_shardings, sharding.replicated(mesh)),
                        donate_argnums=(0,))

  def train_step(state, batch):
    return jitted_step(state, batch, teacher_variables)
  eval_step = jax.jit(make_eval_step(model, mesh, config),
                      in_shardings=(state_shardings, batch_sharding),
                      out_shardings=sharding.replicated(mesh))

  manager = workdir_lib.checkpoint_manager(workdir, config.keep_checkpoints)
  state = workdir_lib.restore_latest(manager, state, state_shardings)
  start_step = int(jax.device_get(state.step))
  # Training examples whose image could not be decoded, over the whole run (resumes included).
  skipped_images = workdir_lib.skipped_images_at(workdir, start_step)

  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  if start_step == 0 and jax.process_index() == 0:
    writer.write_hparams(_flat_config(config))
    workdir_lib.write_config(workdir, config)

  local_batch = config.batch_size // jax.process_count()
  train_ds = input_pipeline.train_dataset(config, train_source, local_batch, start_step)
  batches = input_pipeline.prefetch_to_mesh(train_ds.as_numpy_iterator(), batch_sharding)

  logging.info('Training %s on %s for %d steps (from step %d), global batch %d, mesh %s',
               config.model_name, config.dataset, total_steps, start_step, config.batch_size,
               dict(mesh.shape))
  history, pending = [], None
  tick, tick_step, start_time = time.time(), start_step, time.time()
  train_metrics: dict[str, float] = {}
  eval_metrics: dict[str, float] = {}
  for step in range(start_step + 1, total_steps + 1):
    with jax.profiler.StepTraceAnnotation('train', step_num=step):
      state, metrics = train_step(state, next(batches))
    if pending is not None:
      _check_finite(*pending)  # The previous step's loss; this step is still running.
    pending = (step, metrics['loss'])
    history.append(metrics)

    is_last = step == total_steps
    if step % config.log_every == 0 or is_last:
      _check_finite(*pending)
      stacked = jax.device_get(jax.tree.map(lambda *xs: jnp.stack(xs), *history))
      skipped_images += int(np.sum(stacked.pop('skipped', 0)))
      train_metrics = {f'train_{k}' if k != 'learning_rate' else k: float(np.mean(v))
                       for k, v in stacked.items()}
      train_metrics['skipped_images'] = skipped_images
      history = []
      now = time.time()
      train_metrics['img_per_sec'] = (step - tick_step) * config.batch_size / (now - tick)
      writer.write_scalars(step, train_metrics)
      eta = (now - start_time) / (step - start_step) * (total_steps - step)
      logging.info('step %d/%d  loss %.4f  acc %.3f  lr %.3g  |g| %.3g  %.1f img/s  ETA %s',
                   step, total_steps, train_metrics['train_loss'],
                   train_metrics['train_accuracy'], train_metrics['learning_rate'],
                   train_metrics['train_grad_norm'], train_metrics['img_per_sec'],
                   time.strftime('%H:%M:%S', time.gmtime(eta)))
      if skipped_images:
        logging.info('step %d: %d training images skipped so far (undecodable)', step,
                     skipped_images)
      tick, tick_step = time.time(), step

    if step % config.eval_every == 0 or is_last:
      eval_metrics = evaluate(eval_step, state, config, eval_source, batch_sharding, eval_data)
      writer.write_scalars(step, {k: v for k, v in eval_metrics.items()
                                  if k not in ('eval_examples', 'eval_batches')})
      logging.info('step %d eval: top-1 %.4f  top-5 %.4f  loss %.4f  (%d examples)', step,
                   eval_metrics['eval_accuracy'], eval_metrics['eval_top5_accuracy'],
                   eval_metrics['eval_loss'], eval_metrics['eval_examples'])
      if state.ema_params is not None:
        ema_state = state.replace(params=state.ema_params, model_state=state.ema_model_state)
        ema_metrics = evaluate(eval_step, ema_state, config, eval_source, batch_sharding)
        ema_metrics = {f'ema_{k}': v for k, v in ema_metrics.items()
                       if k not in ('eval_examples', 'eval_batches')}
        writer.write_scalars(step, ema_metrics)
        logging.info('step %d EMA eval: top-1 %.4f', step, ema_metrics['ema_eval_accuracy'])
        eval_metrics.update(ema_metrics)

    if config.get('fewshot_every') and (step % config.fewshot_every == 0 or is_last):
      variables = jax.device_get(sharding.gather({'params': state.params, **state.model_state}))
      fewshot_metrics = fewshot.evaluate(model, variables, config)
      writer.write_scalars(step, fewshot_metrics)
      logging.info('step %d few-shot: %s', step,
                   '  '.join(f'{k} {v:.4f}' for k, v in fewshot_metrics.items()))
      eval_metrics.update(fewshot_metrics)

    if step % config.checkpoint_every == 0 or is_last:
      _check_finite(*pending)
      workdir_lib.save_checkpoint(manager, step, state)
      workdir_lib.save_skipped_images(workdir, step, skipped_images + sum(
          int(jax.device_get(m.get('skipped', 0))) for m in history))
  manager.wait_until_finished()
  writer.flush()

  if config.get('export_npz', True):
    params, model_state, ema_params, ema_model_state = jax.device_get(sharding.gather(
        (state.params, state.model_state, state.ema_params, state.ema_model_state)))
    workdir_lib.export_final(workdir, params, model_state, ema_params,
                             _model_card(config, num_classes, train_source), ema_model_state)
  return {**train_metrics, **eval_metrics, 'step': int(jax.device_get(state.step))}


def _model_card(config: ml_collections.ConfigDict, num_classes: int,
                source: input_pipeline.Source) -> dict[str, Any]:
  names = source.class_names
  if names is not None and len(names) != num_classes:
    names = None  # config.num_classes widened the head beyond the dataset's classes.
  overrides = config.model.to_dict() if hasattr(config.model, 'to_dict') else dict(config.model)
  return workdir_lib.make_card(
      model_name=config.model_name, model_overrides=overrides, num_classes=num_classes,
      class_names=names, image_size=config.image_size, pp_eval=config.pp_eval,
      normalization=preprocess.pixel_normalization(config.pp_eval))


def _flat_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
  out = {}
  for key, value in checkpoint.flatten(config.to_dict()).items():
    out[key] = value if isinstance(value, (int, float, str, bool)) else json.dumps(value)
  return out
