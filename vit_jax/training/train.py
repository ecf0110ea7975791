"""Training and evaluation: one jitted, sharded train step, Orbax checkpoints, exact resume.

`train_and_evaluate(config, workdir)` is the whole job: data → model (optionally from a
pre-trained file) → the job's steps on the device mesh (`training.job`, built once) → its
evaluators (`training.evaluators`) → TensorBoard metrics, a log file, checkpoints
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
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vit_jax import checkpoint
from vit_jax.data import input_pipeline
from vit_jax.data import preprocess
from vit_jax.models import card
from vit_jax.models import loader
from vit_jax.training import distill
from vit_jax.training import evaluators as evaluators_lib
from vit_jax.training import job as job_lib
from vit_jax.training import sharding
from vit_jax.training import workdir as workdir_lib
from vit_jax.training.step import create_model

# (config, source, per-process batch size, start step) -> a tf.data.Dataset of training batches.
TrainData = Callable[[ml_collections.ConfigDict, input_pipeline.Source, int, int], Any]


# ---------------------------------------------------------------------------------------------
# The job.


def _validate(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> None:
  """Checks that need no data or compute, so bad configs fail in seconds."""
  job_lib.check(config, mesh)
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


def _check_finite(step: int, loss: jax.Array) -> None:
  value = float(loss)
  if not math.isfinite(value):
    raise FloatingPointError(f'Loss is {value} at step {step}; stopping without saving the state '
                             'of that step (the last checkpoint is intact)')


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       train_data: TrainData | None = None) -> dict[str, float]:
  """Trains `config` in `workdir` (resuming from its last checkpoint) and evaluates.

  Args:
    config: the experiment config.
    workdir: where checkpoints, logs, metrics and the export go.
    train_data: (config, source, per-process batch size, start step) -> the training batches;
      default `input_pipeline.train_dataset`. A benchmark hands the job another stream here.

  Returns the final evaluation metrics (and the last training metrics).
  """
  with _log_file(workdir):
    mesh = sharding.make_mesh(config.mesh)
    _validate(config, mesh)
    config = job_lib.normalized(config)
    with jax.set_mesh(mesh):
      return _train_and_evaluate(config, workdir, mesh,
                                 train_data or input_pipeline.train_dataset)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                        mesh: jax.sharding.Mesh, train_data: TrainData) -> dict[str, float]:
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
    config.total_steps = total_steps

  params, pretrained_state = None, None
  if config.get('pretrained_path'):
    params, pretrained_state = loader.load_pretrained(
        config.pretrained_path, create_model(config, num_classes), config.image_size,
        model_name=config.model_name, seed=int(config.seed),
        posemb_resize=config.get('posemb_resize', 'zoom'),
        resample_patch_embedding=bool(config.get('resample_patch_embedding', False)))
  teacher, teacher_variables = None, None
  if config.get('distillation'):
    teacher, teacher_variables = distill.load_teacher(config, num_classes)
    teacher_variables = jax.device_put(teacher_variables, sharding.replicated(mesh))
    logging.info('Distilling from %s (%s)', config.distillation.teacher_model,
                 config.distillation.teacher_path)
  job = job_lib.build(config, num_classes, mesh, params=params, model_state=pretrained_state,
                      teacher=teacher)
  evaluators = evaluators_lib.for_job(job, eval_source)
  state = job.init_state(params, pretrained_state)
  if jax.process_index() == 0:
    sharding.report(state.params, job.state_shardings.params)

  def train_step(state, batch):
    return job.train_step(state, batch, teacher_variables)

  manager = workdir_lib.checkpoint_manager(workdir, config.keep_checkpoints)
  state = workdir_lib.restore_latest(manager, state, job.state_shardings)
  start_step = int(jax.device_get(state.step))
  # Training examples whose image could not be decoded, over the whole run (resumes included).
  skipped_images = workdir_lib.skipped_images_at(workdir, start_step)

  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  if start_step == 0 and jax.process_index() == 0:
    writer.write_hparams(_flat_config(config))
    workdir_lib.write_config(workdir, config)

  local_batch = config.batch_size // jax.process_count()
  train_ds = train_data(config, train_source, local_batch, start_step)
  batches = input_pipeline.prefetch_to_mesh(train_ds.as_numpy_iterator(), job.batch_sharding)

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

    for evaluator in evaluators:
      if evaluator.every and (step % evaluator.every == 0 or is_last):
        metrics = evaluator(step, state)
        writer.write_scalars(step, {k: v for k, v in metrics.items()
                                    if k not in evaluators_lib.BOOKKEEPING})
        eval_metrics.update(metrics)

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
  return card.make_card(
      model_name=config.model_name, model_overrides=overrides, num_classes=num_classes,
      class_names=names, image_size=config.image_size, pp_eval=config.pp_eval,
      normalization=preprocess.pixel_normalization(config.pp_eval))


def _flat_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
  out = {}
  for key, value in checkpoint.flatten(config.to_dict()).items():
    out[key] = value if isinstance(value, (int, float, str, bool)) else json.dumps(value)
  return out
