"""What the training loop evaluates: the evaluators `config.evals` declares, by name.

Each entry's `type` picks its class (`TYPES`); each evaluator builds its data once per job (the
pipelines are built, not run, before the first step, so a preprocessing that does not fit the
model fails at once), is called every `every` steps and at the last one, and returns its metrics
named NAME/METRIC after its entry (`test/accuracy`, `minival/loss`, `fewshot/5shot`); the loop
writes them. The weight EMA is an option of an evaluator (`ema`), not an evaluator of its own.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections

from vit_jax.data import input_pipeline
from vit_jax.training import fewshot
from vit_jax.training import sharding
from vit_jax.training.job import Job
from vit_jax.training.step import TrainState

# Metrics that describe an evaluation rather than measure the model: returned, not written.
BOOKKEEPING = ('examples', 'batches')


def is_bookkeeping(metric: str) -> bool:
  """Whether `metric` (NAME/METRIC) describes an evaluation (returned, not written)."""
  return metric.rpartition('/')[2] in BOOKKEEPING


class Evaluator(Protocol):
  """Something the loop calls every `every` steps (and at the last one)."""
  every: int

  def __call__(self, step: int, state: TrainState) -> dict[str, float]:
    ...


def evaluate(eval_step: Callable, state: TrainState, batch_sharding: Any,
             dataset: tuple[Any, int]) -> dict[str, float | int]:
  """Top-1/top-5 accuracy and loss over every example of an eval dataset, exactly once.

  `dataset`: the (dataset, number of batches) of `input_pipeline.eval_dataset`. Returns
  accuracy, top5_accuracy, loss, examples, batches (and skipped, where images could not be
  decoded).
  """
  ds, num_batches = dataset
  totals = None
  for batch in input_pipeline.prefetch_to_mesh(ds.as_numpy_iterator(), batch_sharding):
    sums = eval_step(state, batch)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  count = float(totals['count'])
  metrics = {'accuracy': float(totals['correct_top1']) / count,
             'top5_accuracy': float(totals['correct_top5']) / count,
             'loss': float(totals['loss_sum']) / count,
             'examples': int(count), 'batches': num_batches}
  if 'skipped' in totals:
    metrics['skipped'] = int(totals['skipped'])
  return metrics


def eval_data(job: Job, entry: ml_collections.FrozenConfigDict, split: str,
              local_batch: int) -> tuple[Any, int]:
  """`split` of the evaluator `entry`'s dataset, preprocessed by its `pp` at the job's image
  size: `input_pipeline.eval_dataset`'s (dataset, number of batches)."""
  settings = job.config
  source = input_pipeline.get_source(entry.dataset, split, data_dir=entry.data_dir,
                                     download=settings.download)
  return input_pipeline.eval_dataset(source, local_batch, pp=entry.pp,
                                     image_size=settings.image_size,
                                     skip_corrupt_images=settings.skip_corrupt_images)


def _log(step: int, metrics: dict[str, float | int]) -> None:
  logging.info('step %d  %s', step, '  '.join(
      f'{k} {v:.4f}' if isinstance(v, float) else f'{k} {v}' for k, v in metrics.items()))


class Classification:
  """Accuracy and loss on a split (NAME/...); with `ema`, also the weight EMA's (NAME/ema_...)."""

  def __init__(self, job: Job, name: str, entry: ml_collections.FrozenConfigDict):
    self.job, self.name, self.every, self.ema = job, name, int(entry.every), bool(entry.ema)
    self.dataset = eval_data(job, entry, entry.split, entry.batch_size // jax.process_count())

  def __call__(self, step: int, state: TrainState) -> dict[str, float]:
    metrics = self._named(state, '')
    if self.ema:  # The averaged model as a whole: parameters and BatchNorm statistics.
      ema = state.replace(params=state.ema_params, model_state=state.ema_model_state)
      metrics.update((k, v) for k, v in self._named(ema, 'ema_').items()
                     if not is_bookkeeping(k))
    _log(step, metrics)
    return metrics

  def _named(self, state: TrainState, prefix: str) -> dict[str, float]:
    metrics = evaluate(self.job.eval_step, state, self.job.batch_sharding, self.dataset)
    return {f'{self.name}/{prefix}{k}': v for k, v in metrics.items()}


class FewShot:
  """Few-shot linear probes on the pre-logits features (`training.fewshot`): NAME/{n}shot."""

  def __init__(self, job: Job, name: str, entry: ml_collections.FrozenConfigDict):
    self.name, self.every, self.ema = name, int(entry.every), bool(entry.ema)
    train, test = (eval_data(job, entry, split, entry.batch_size)[0]
                   for split in (entry.train_split, entry.test_split))
    self.probe = fewshot.Probe(job.model, train, test, shots=entry.shots, l2_reg=entry.l2_reg,
                               seed=entry.seed, num_seeds=entry.num_seeds)

  def __call__(self, step: int, state: TrainState) -> dict[str, float]:
    params, model_state = ((state.ema_params, state.ema_model_state) if self.ema
                           else (state.params, state.model_state))
    variables = jax.device_get(sharding.gather({'params': params, **model_state}))
    metrics = {f'{self.name}/{k}': v for k, v in self.probe(variables).items()}
    _log(step, metrics)
    return metrics


# `type` of a `config.evals` entry -> its evaluator (`base_config.EVALUATOR_TYPES`, in order).
TYPES = {'classification': Classification, 'fewshot': FewShot}


def for_job(job: Job) -> list[Evaluator]:
  """The evaluators of the job's settings (`config.evals`), by name."""
  return [TYPES[entry.type](job, name, entry) for name, entry in job.config.evals.items()]
