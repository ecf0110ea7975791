"""The training job's loop speed against its step alone: does the input pipeline throttle it?

Three measurements of one experiment config, each over the same number of steps after as many
untimed ones (compilation, the pipeline's start-up):

- the job: `train.train_and_evaluate` as configured, images/s as its log reports them;
- the step alone: the same job handed a training stream of one cached batch repeated
  (`train_and_evaluate(..., train_data=...)`), so the loop costs only the step and the loop's
  own bookkeeping;
- the pipeline alone: `input_pipeline.train_dataset` iterated with no model, on all cores.

TensorFlow is imported when a function runs, not with this module.
"""

from __future__ import annotations

import sys
import tempfile
import time
from typing import Any, Callable

import ml_collections

from vit_jax.training import config_args


def quick_config(config: ml_collections.ConfigDict, steps: int) -> ml_collections.ConfigDict:
  """`config` for 2 x `steps` steps, logged after each half, no export; evaluated at the end by
  its classification evaluators, each on one batch (no few-shot probes)."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.total_steps = 2 * steps
  config.num_epochs = None
  config.log_every = steps
  config.checkpoint_every = 10 * steps
  config.export_npz = False
  evals = {}
  for name, entry in config.evals.items():
    if entry.type != 'classification':
      continue
    entry.every = 10 * steps
    if '[' not in entry.split:  # The final evaluation is not timed: keep it short.
      entry.split = f'{entry.split}[:{entry.batch_size or config.eval_batch_size}]'
    evals[name] = entry
  config.evals = ml_collections.ConfigDict(evals)
  return config


def one_batch_repeated(train_dataset: Callable[..., Any]) -> Callable[..., Any]:
  """`train_dataset` whose stream is its first batch, cached and repeated."""
  def wrapped(*args: Any, **kwargs: Any):
    return train_dataset(*args, **kwargs).take(1).cache().repeat()
  return wrapped


def job_images_per_s(config: ml_collections.ConfigDict, steps: int,
                     input_cost: bool = True) -> float:
  """Images/s of the job's loop over its last `steps` steps (after `steps` untimed ones)."""
  from vit_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  from vit_jax.training import train  # pylint: disable=g-import-not-at-top
  stream = (input_pipeline.train_dataset if input_cost
            else one_batch_repeated(input_pipeline.train_dataset))
  with tempfile.TemporaryDirectory() as workdir:
    metrics = train.train_and_evaluate(quick_config(config, steps), workdir, train_data=stream)
  return metrics['img_per_sec']


def pipeline_images_per_s(config: ml_collections.ConfigDict, steps: int) -> float:
  """Images/s of the training stream alone over `steps` batches after `steps` untimed ones."""
  from vit_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  source = input_pipeline.get_source(config.dataset, config.train_split,
                                     data_dir=config.data_dir, download=config.download)
  batches = input_pipeline.train_dataset(config, source, config.batch_size).as_numpy_iterator()
  for _ in range(steps):
    next(batches)
  start = time.perf_counter()
  for _ in range(steps):
    next(batches)
  return steps * config.batch_size / (time.perf_counter() - start)


def rates(config: ml_collections.ConfigDict, steps: int) -> dict[str, float]:
  """Images/s of the job, of its step alone and of its pipeline alone, over `steps` steps."""
  def log(what):
    print(f'[job-loop] {what} ...', file=sys.stderr, flush=True)

  log('the pipeline alone')
  pipeline = pipeline_images_per_s(config, steps)
  log('the step alone (one cached batch)')
  step_alone = job_images_per_s(config, steps, input_cost=False)
  log('the job')
  return {'job': job_images_per_s(config, steps), 'step alone': step_alone,
          'pipeline alone': pipeline}


def job_loop_table(spec: str, steps: int) -> str:
  """The markdown table of `--job-loop=SPEC`: the job, the step alone, the pipeline alone."""
  config = config_args.load_config(spec)
  measured = rates(config, steps)
  step_alone = measured['step alone']
  what = {'job': 'the job (input pipeline and step)',
          'step alone': 'the step alone (the loop on one cached batch)',
          'pipeline alone': 'the input pipeline alone (no model, all cores)'}
  return '\n'.join([
      f'The job `{spec}` ({config.model_name}, {config.dataset}, batch {config.batch_size}, '
      f"pp_train '{config.pp_train}'): images/s over {steps} steps after {steps} untimed ones.",
      '',
      '| measured | img/s | / step alone |',
      '|---|---:|---:|',
      *(f'| {what[k]} | {v:.1f} | {v / step_alone:.2f} |' for k, v in measured.items())])
