"""What the training loop evaluates: a list of evaluators, each called every so many steps.

Each evaluator builds its data once per job (the pipelines are built, not run, before the first
step, so a preprocessing that does not fit the model fails at once) and returns its metrics; the
loop writes them. `for_job` lists the ones a config asks for: accuracy on the eval split, the
same for the weight EMA, and the few-shot probe.
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
BOOKKEEPING = ('eval_examples', 'eval_batches')


class Evaluator(Protocol):
  """Something the loop calls every `every` steps (and at the last one)."""
  every: int

  def __call__(self, step: int, state: TrainState) -> dict[str, float]:
    ...


def evaluate(eval_step: Callable, state: TrainState, config: ml_collections.ConfigDict,
             batch_sharding: Any, dataset: tuple[Any, int]) -> dict[str, float]:
  """Top-1/top-5 accuracy and loss over every example of an eval dataset, exactly once.

  `dataset`: the (dataset, number of batches) of `input_pipeline.eval_dataset`.
  """
  ds, num_batches = dataset
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


class Accuracy:
  """Accuracy and loss on the eval split; with `ema`, of the weight EMA (`ema_eval_*`)."""

  def __init__(self, job: Job, dataset: tuple[Any, int], ema: bool = False):
    self.job, self.dataset, self.ema = job, dataset, ema
    self.every = int(job.config.eval_every)

  def __call__(self, step: int, state: TrainState) -> dict[str, float]:
    if self.ema:  # The averaged model as a whole: parameters and BatchNorm statistics.
      state = state.replace(params=state.ema_params, model_state=state.ema_model_state)
    metrics = evaluate(self.job.eval_step, state, self.job.config, self.job.batch_sharding,
                       self.dataset)
    if self.ema:
      metrics = {f'ema_{k}': v for k, v in metrics.items() if k not in BOOKKEEPING}
      logging.info('step %d EMA eval: top-1 %.4f', step, metrics['ema_eval_accuracy'])
    else:
      logging.info('step %d eval: top-1 %.4f  top-5 %.4f  loss %.4f  (%d examples)', step,
                   metrics['eval_accuracy'], metrics['eval_top5_accuracy'],
                   metrics['eval_loss'], metrics['eval_examples'])
    return metrics


class FewShot:
  """Few-shot linear probes on the pre-logits features (`training.fewshot`)."""

  def __init__(self, job: Job):
    self.probe = fewshot.Probe(job.model, job.config)
    self.every = int(job.config.fewshot_every)

  def __call__(self, step: int, state: TrainState) -> dict[str, float]:
    variables = jax.device_get(sharding.gather({'params': state.params, **state.model_state}))
    metrics = self.probe(variables)
    logging.info('step %d few-shot: %s', step,
                 '  '.join(f'{k} {v:.4f}' for k, v in metrics.items()))
    return metrics


def for_job(job: Job, eval_source: input_pipeline.Source) -> list[Evaluator]:
  """The evaluators `job.config` asks for, in the order the loop runs them."""
  config = job.config
  dataset = input_pipeline.eval_dataset(config, eval_source,
                                        config.eval_batch_size // jax.process_count())
  found: list[Evaluator] = [Accuracy(job, dataset)]
  if config.get('ema_decay'):
    found.append(Accuracy(job, dataset, ema=True))
  if config.get('fewshot_every'):
    found.append(FewShot(job))
  return found
