"""Training and evaluation: one jitted, sharded train step, Orbax checkpoints, exact resume.

`train_and_evaluate(config, workdir)` is the whole job: data → the job's settings (the config
prepared once, `training.settings`) → model (optionally from a pre-trained file) → the job's
steps on the device mesh (`training.job`, built once) → the evaluators of `config.evals`
(`training.evaluators`) → TensorBoard metrics, a log file, checkpoints
every `checkpoint_every` steps (the last `keep_checkpoints` kept) and an original-format `.npz` of
the final parameters. A run restarted on the same workdir resumes from its last checkpoint and
ends with the same parameters as an uninterrupted run: the step's dropout key is
fold_in(seed key, step) and the input stream is a function of the step.

The workdir may be on object storage (`gs://bucket/run`), shared by every host of a pod
(`training.workdir`); the job checks that it can write there before anything else, and the log
and TensorBoard events reach it through `training.staging`. On a preemption notice (SIGTERM)
every host saves the checkpoint of one agreed step and the job stops with
`preemption.Preempted` (`training.preemption`).
"""

from __future__ import annotations

import contextlib
import logging as py_logging
import math
import sys
import time
from typing import Any, Callable, Iterator

from absl import logging
from clu import metric_writers
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vit_jax.checkpoint import paths
from vit_jax.data import input_pipeline
from vit_jax.data import preprocess
from vit_jax.models import card
from vit_jax.models import loader
from vit_jax.training import distill
from vit_jax.training import evaluators as evaluators_lib
from vit_jax.training import job as job_lib
from vit_jax.training import preemption as preemption_lib
from vit_jax.training import settings as settings_lib
from vit_jax.training import sharding
from vit_jax.training import staging as staging_lib
from vit_jax.training import workdir as workdir_lib
from vit_jax.training.step import create_model

# (settings, source, per-process batch size, start step) -> a tf.data.Dataset of training batches.
TrainData = Callable[[ml_collections.ConfigDict, input_pipeline.Source, int, int], Any]


# ---------------------------------------------------------------------------------------------
# The job.


@contextlib.contextmanager
def _log_file(folder: str) -> Iterator[None]:
  """Copies the log into FOLDER/train.<process>.log while the job runs, and only then: a second
  job in the same process (a sweep, a notebook) writes to its own file, not to this one.

  `folder` is local: the workdir, or the staging folder of a remote one (`training.staging`).
  """
  handler = py_logging.FileHandler(paths.join(folder, f'train.{jax.process_index()}.log'))
  handler.setFormatter(py_logging.Formatter('%(asctime)s %(levelname)s %(message)s'))
  handler.addFilter(_quiet_libraries)
  root = py_logging.getLogger()
  root.addHandler(handler)
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_quiet_libraries)
  try:
    yield
  except preemption_lib.Preempted as e:
    logging.warning('%s', e)
    raise
  except Exception:
    # The traceback goes to the file only: the console gets it from the exception itself.
    handler.handle(root.makeRecord(root.name, py_logging.ERROR, __file__, 0,
                                   'The job stopped with an error:', (), sys.exc_info()))
    raise
  finally:
    root.removeHandler(handler)
    handler.close()


# Libraries whose INFO records come with every save or remote read (Orbax; fsspec's read-ahead).
_CHATTY = ('/orbax/', '/fsspec/', '/gcsfs/')


def _quiet_libraries(record: py_logging.LogRecord) -> bool:
  """Keeps the per-save and per-read INFO chatter of `_CHATTY` libraries out of the console and
  the log file."""
  return record.levelno >= py_logging.WARNING or not any(
      library in record.pathname for library in _CHATTY)


def _check_finite(step: int, loss: jax.Array) -> None:
  value = float(loss)
  if not math.isfinite(value):
    raise FloatingPointError(f'Loss is {value} at step {step}; stopping without saving the state '
                             'of that step (the last checkpoint is intact)')


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       train_data: TrainData | None = None) -> dict[str, float]:
  """Trains `config` in `workdir` (resuming from its last checkpoint) and evaluates.

  Args:
    config: the experiment config, prepared here into the job's settings
      (`training.settings.prepare`) once, with the training split's facts.
    workdir: where checkpoints, logs, metrics and the export go: a local folder or an
      object-store URL (`gs://bucket/run`), the same on every host.
    train_data: (settings, source, per-process batch size, start step) -> the training batches;
      default `input_pipeline.train_dataset`. A benchmark hands the job another stream here.

  Returns the final evaluation metrics (NAME/METRIC of each evaluator) and the last training
  metrics.

  Raises:
    paths.StorageError: `workdir` cannot be written (a missing bucket, no credentials or no
      permission), before anything else runs.
    FileNotFoundError: no file at `pretrained_path` or the distillation teacher's path (a
      `hub.HubError` for a Hub name, naming what the repo holds).
    preemption.Preempted: a preemption notice stopped the job after saving a checkpoint.
  """
  paths.probe_writable(workdir)  # Every host, before anything else: fail now, not in an hour.
  # A SIGTERM from here on (during set-up and compilation too) saves the first step it can.
  with staging_lib.Staging(workdir) as staging, _log_file(staging.folder), \
      preemption_lib.Preemption() as preemption:
    for name, path in (('pretrained_path', config.pretrained_path),
                       ('distillation.teacher_path',
                        config.distillation.teacher_path if config.distillation else None)):
      if path:
        try:  # Hub names are fetched here (huggingface_hub's cache), once.
          loader.locate(path)
        except FileNotFoundError as e:
          raise FileNotFoundError(f'config.{name} not found: {e}') from e
    mesh = sharding.make_mesh(config.mesh)
    train_source = input_pipeline.get_source(config.dataset, config.train_split,
                                             data_dir=config.data_dir, download=config.download)
    settings = settings_lib.prepare(config, settings_lib.DataFacts(
        num_classes=train_source.num_classes,
        train_examples=train_source.num_examples * jax.process_count()), mesh)
    with jax.set_mesh(mesh):
      return _train_and_evaluate(settings, workdir, mesh, train_source,
                                 train_data or input_pipeline.train_dataset, staging,
                                 preemption)


def _train_and_evaluate(config: ml_collections.FrozenConfigDict, workdir: str,
                        mesh: jax.sharding.Mesh, train_source: input_pipeline.Source,
                        train_data: TrainData, staging: staging_lib.Staging,
                        preemption: preemption_lib.Preemption) -> dict[str, float]:
  """The job of `config`, the job's settings (`training.settings.prepare`)."""
  total_steps = config.total_steps
  model = create_model(config, config.num_classes)
  params, pretrained_state = None, None
  if config.pretrained_path:
    params, pretrained_state = loader.load_pretrained(
        config.pretrained_path, model, config.image_size, model_name=config.model_name,
        seed=config.seed, posemb_resize=config.posemb_resize,
        resample_patch_embedding=config.resample_patch_embedding)
  teacher, teacher_variables = None, None
  if config.distillation:
    teacher, teacher_variables = distill.load_teacher(config.distillation, config.image_size,
                                                      config.num_classes)
    teacher_variables = jax.device_put(teacher_variables, sharding.replicated(mesh))
    logging.info('Distilling from %s (%s)', config.distillation.teacher_model,
                 config.distillation.teacher_path)
  job = job_lib.build(config, mesh, model=model, params=params, model_state=pretrained_state,
                      teacher=teacher)
  evaluators = evaluators_lib.for_job(job)
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

  writer = metric_writers.create_default_writer(staging.folder,
                                                just_logging=jax.process_index() > 0)
  if start_step == 0 and jax.process_index() == 0:
    writer.write_hparams(workdir_lib.hparams(config))
    workdir_lib.write_config(workdir, config)

  local_batch = config.batch_size // jax.process_count()
  train_ds = train_data(config, train_source, local_batch, start_step)
  batches = input_pipeline.prefetch_to_mesh(train_ds.as_numpy_iterator(), job.batch_sharding)

  logging.info('Training %s on %s for %d steps (from step %d), global batch %d, mesh %s',
               config.model_name, config.dataset, total_steps, start_step, config.batch_size,
               dict(mesh.shape))
  for caveat in job.accumulation_caveats():  # E.g. BatchNorm: not one big batch's step.
    logging.warning('%s', caveat)
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
    # Every host gets the same answer at the same step; the last step is saved anyway.
    preempted = preemption.reached(step) and not is_last
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
      if evaluator.every and (step % evaluator.every == 0 or is_last) and not preempted:
        metrics = evaluator(step, state)
        writer.write_scalars(step, {k: v for k, v in metrics.items()
                                    if not evaluators_lib.is_bookkeeping(k)})
        eval_metrics.update(metrics)

    periodic = config.checkpoint_every and step % config.checkpoint_every == 0
    if periodic or is_last or preempted:
      _check_finite(*pending)
      if preempted:
        preemption.saving(step)
      workdir_lib.save_checkpoint(manager, step, state)
      workdir_lib.save_skipped_images(workdir, step, skipped_images + sum(
          int(jax.device_get(m.get('skipped', 0))) for m in history))
      if preempted:
        manager.wait_until_finished()  # Every host: the step is committed.
        writer.flush()
        raise preemption_lib.Preempted(step, workdir)
      writer.flush()
      staging.request()  # The log and events as of this checkpoint, copied in the background.
  manager.wait_until_finished()
  writer.close()

  if config.export_npz:
    params, model_state, ema_params, ema_model_state = jax.device_get(sharding.gather(
        (state.params, state.model_state, state.ema_params, state.ema_model_state)))
    workdir_lib.export_final(workdir, params, model_state, ema_params,
                             _model_card(config, train_source), ema_model_state)
  return {**train_metrics, **eval_metrics, 'step': int(jax.device_get(state.step))}


def _model_card(config: ml_collections.FrozenConfigDict,
                source: input_pipeline.Source) -> dict[str, Any]:
  names = source.class_names
  if names is not None and len(names) != config.num_classes:
    names = None  # config.num_classes widened the head beyond the dataset's classes.
  return card.make_card(
      model_name=config.model_name, model_overrides=config.model.to_dict(),
      num_classes=config.num_classes,
      class_names=names, image_size=config.image_size, pp_eval=config.pp_eval,
      normalization=preprocess.pixel_normalization(config.pp_eval))
