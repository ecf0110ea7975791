"""The job's settings: the user's config prepared once, from the config and the data's facts.

`prepare` is the one step between an experiment config (`base_config` and a file of `configs/`,
with command-line overrides) and everything that runs it: it checks the config (fields, removed
fields, evaluators, batch sizes against the mesh), normalises it (`image_size` as (height,
width)), completes it (`num_classes` and `total_steps` from the data; `model` and
`distillation` with all their fields; every evaluator with its type's fields and the job's data
where it names none, its `ema` decided) and freezes it. The job, the evaluators, the optimizer,
the AOT compiler and the benchmarks read these settings as they are; nothing assigns a field
after `prepare`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax
import ml_collections

from vit_jax.training import base_config
from vit_jax.training import sharding


# Fields of older configs -> (type, field) of the evaluator field that replaced them (field ''
# for the few-shot settings, now the fields of a 'fewshot' evaluator).
REMOVED_FIELDS = {
    'eval_every': ('classification', 'every'),
    'eval_split': ('classification', 'split'),
    'fewshot_every': ('fewshot', 'every'),
    'fewshot': ('fewshot', ''),
}


def removed_field_error(field: str, evals: Mapping[str, Any]) -> str:
  """The error for a config that sets removed `field`, naming the `config.evals` entries (of
  `evals`, the config's) that replace it."""
  kind, sub = REMOVED_FIELDS[field]
  names = [name for name, entry in evals.items() if entry.get('type') == kind]
  if names:
    where = ' / '.join(f'config.evals.{name}' + (f'.{sub}' if sub else '') for name in names)
  else:
    where = (f"config.evals.NAME = base_config.evaluator('{kind}', ...) in the config, or "
             f'evals=NAME:{kind} in its argument')
  return f'config.{field} was removed: set {where} instead'


@dataclasses.dataclass(frozen=True)
class DataFacts:
  """What the settings take from the data rather than from the config."""
  num_classes: int  # The dataset's classes (a head may be wider: config.num_classes).
  # Examples of the training split over all processes; None where no data is read (compiling
  # ahead of time): `total_steps` is then the config's, even where it trains `num_epochs`.
  train_examples: int | None = None


def prepare(config: ml_collections.ConfigDict, data: DataFacts,
            mesh: jax.sharding.Mesh) -> ml_collections.FrozenConfigDict:
  """The settings of `config` run on `mesh` with `data`: checked, normalised, completed, frozen.

  Pure: `config` is left as it is.

  Raises:
    ValueError: a field `base_config` does not declare (a removed one names its replacement), an
      evaluator of an unknown type or with an unknown field, `ema` without `ema_decay`, fewer
      classes than the data has, a batch size the mesh and processes do not divide, or a
      negative step interval.
  """
  fields = config.to_dict()
  _check_fields(fields)
  fields['model'] = base_config.model_fields(fields['model_name'], fields['model']).to_dict()
  if fields['distillation'] is not None:
    fields['distillation'] = base_config.distillation(**fields['distillation']).to_dict()
  size = fields['image_size']
  height, width = (size, size) if isinstance(size, int) else tuple(size)
  fields['image_size'] = (int(height), int(width))
  num_classes = fields['num_classes'] or data.num_classes
  if num_classes < data.num_classes:
    raise ValueError(f'config.num_classes={num_classes} but {fields["dataset"]} has '
                     f'{data.num_classes} classes')
  fields['num_classes'] = num_classes
  if fields['num_epochs'] and data.train_examples is not None:
    fields['total_steps'] = math.ceil(fields['num_epochs'] * data.train_examples /
                                      fields['batch_size'])
  fields['evals'] = {name: _evaluator(name, entry, fields)
                     for name, entry in fields['evals'].items()}
  _check_batches(fields, mesh)
  _check_intervals(fields)
  return ml_collections.FrozenConfigDict(fields)


def _check_intervals(fields: dict[str, Any]) -> None:
  """Step intervals: `log_every` at least 1; `checkpoint_every` 0 (off) or more."""
  if fields['log_every'] < 1:
    raise ValueError(f'config.log_every={fields["log_every"]} must be at least 1')
  if fields['checkpoint_every'] < 0:
    raise ValueError(f'config.checkpoint_every={fields["checkpoint_every"]} must be 0 (no '
                     'periodic checkpoints: the last step and a preemption still save) or more')


def _check_fields(fields: dict[str, Any]) -> None:
  """Every field (and every field of `optimizer` and `lr`) is one `base_config` declares."""
  known = base_config.get_config()
  for field, value in fields.items():
    if field in REMOVED_FIELDS:
      raise ValueError(removed_field_error(field, fields['evals']))
    if field not in known:
      raise ValueError(f'Unknown config field config.{field}; the fields are those of '
                       'vit_jax/training/base_config.py')
    if field in ('optimizer', 'lr'):
      unknown = sorted(set(value) - set(known[field]))
      if unknown:
        raise ValueError(f'Unknown config field config.{field}.{unknown[0]}; known: '
                         f'{", ".join(known[field])}')


def _evaluator(name: str, entry: dict[str, Any], job: dict[str, Any]) -> dict[str, Any]:
  """Evaluator `name` with every field of its type, the job's data where it names none."""
  if 'type' not in entry:
    raise ValueError(f'config.evals.{name} has no type; types: '
                     f'{", ".join(base_config.EVALUATOR_TYPES)}')
  try:
    out = base_config.evaluator(entry['type'], **entry).to_dict()
  except ValueError as e:
    raise ValueError(f'config.evals.{name}: {e}') from None
  for field, default in (('dataset', job['dataset']), ('data_dir', job['data_dir']),
                         ('pp', job['pp_eval'])):
    if out[field] is None:
      out[field] = default
  if out['type'] == 'classification':
    if out['batch_size'] is None:
      out['batch_size'] = job['eval_batch_size']
    if out['ema'] is None:
      out['ema'] = bool(job['ema_decay'])
  if out['ema'] and not job['ema_decay']:
    raise ValueError(f'config.evals.{name}.ema is True but the job keeps no EMA: set '
                     'config.ema_decay')
  return out


def _check_batches(fields: dict[str, Any], mesh: jax.sharding.Mesh) -> None:
  """Batch sizes against the devices the batch is split over and the processes."""
  units, processes = sharding.batch_size_per_unit(mesh), jax.process_count()
  batches = {'config.batch_size': fields['batch_size'],
             'config.eval_batch_size': fields['eval_batch_size']}
  batches.update({f'config.evals.{name}.batch_size': entry['batch_size']
                  for name, entry in fields['evals'].items()
                  if entry['type'] == 'classification'})
  for field, value in batches.items():
    if value <= 0 or value % units or value % processes:
      raise ValueError(f'{field}={value} is not divisible by the {units} devices the batch is '
                       f'split over (mesh {dict(mesh.shape)}) and the {processes} processes')
  accum = fields['accum_steps']
  if accum < 1 or fields['batch_size'] % (accum * units):
    raise ValueError(f'config.batch_size={fields["batch_size"]} is not divisible by '
                     f'accum_steps ({accum}) x {units} devices')
