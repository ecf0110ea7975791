"""Fit before launch: the cheapest variant of a config that fits the target's memory.

Only knobs that leave the optimizer step's mathematics alone are searched: gradient accumulation
(`accum_steps`, the same mean gradient over the same batch), rematerialization of the encoder
blocks (`model.transformer.remat`, recomputed activations) and FSDP sharding rules (`sharding_rules`:
parameters and optimizer state split over the data axis). Layer scan is left as configured: it
changes the parameter tree (stacked `encoderblock`), hence checkpoints.

Order, cheapest first: the fewest accumulation steps, then no recomputation before
recomputation, and per-device state replicated before sharded (FSDP adds all-gathers). XLA's TPU
cost model cannot rank the variants: it counts the accumulation loop's body once. Compiles are
skipped where the measurements so far show that a variant cannot fit (temporaries shrink at most
in proportion to the micro-batch).
"""

from __future__ import annotations

import dataclasses
import re
import sys
from typing import Any

import ml_collections

from vit_jax.aot import compile_job
from vit_jax.aot import targets
from vit_jax.training import sharding

FSDP_RULES = (('.*', 'fsdp'),)
_SLACK = 1.05  # Predictions within 5% of the limit are compiled rather than skipped.


@dataclasses.dataclass(frozen=True)
class Variant:
  """One point of the search."""
  accum_steps: int
  remat: bool
  fsdp: bool

  def overrides(self, config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config fields this variant sets, as `--config.FIELD` names -> values."""
    out: dict[str, Any] = {}
    if self.accum_steps != config.accum_steps:
      out['accum_steps'] = self.accum_steps
    if self.remat and not _remat(config):
      out['model.transformer.remat'] = True
    if self.fsdp and tuple(config.sharding_rules) != FSDP_RULES:
      out['sharding_rules'] = FSDP_RULES
    return out


def _remat(config: ml_collections.ConfigDict) -> bool:
  """Whether the config recomputes its encoder blocks (models without one: False)."""
  return bool('transformer' in config.model and config.model.transformer.remat)


def apply(config: ml_collections.ConfigDict, overrides: dict[str, Any]
          ) -> ml_collections.ConfigDict:
  """A copy of `config` with `overrides` ('a.b.c' -> value) set."""
  out = ml_collections.ConfigDict(config.to_dict())
  for path, value in overrides.items():
    *parents, leaf = path.split('.')
    node = out
    for name in parents:
      if name not in node or node[name] is None:
        node[name] = ml_collections.ConfigDict()
      node = node[name]
    node[leaf] = value
  return out


def _available(report: compile_job.Report) -> int:
  """Bytes the compiler allows per device (from its message on TPUs), else the usable memory."""
  if report.oom_message:
    m = re.search(r'available HBM \(([\d.]+)([KMGT])\)', report.oom_message)
    if m:
      return int(float(m.group(1)) * {'K': 2**10, 'M': 2**20, 'G': 2**30,
                                      'T': 2**40}[m.group(2)])
  return report.usable_memory_bytes or report.device_memory_bytes


def _need(report: compile_job.Report) -> int | None:
  """Per-device bytes the step needs: total where it compiled, else state + temporaries."""
  b = report.per_device_bytes
  if b.get('total') is not None:
    return int(b['total'])
  if b.get('temporaries') is None:
    return None
  return int(b['params'] + b['optimizer'] + b['temporaries'])


def valid_accum_steps(config: ml_collections.ConfigDict, units: int) -> list[int]:
  """Accumulation steps that split the batch evenly over micro-batches and devices."""
  batch, start = int(config.batch_size), int(config.accum_steps)
  return [a for a in range(start, batch // units + 1) if batch % (a * units) == 0]


def fit(config: ml_collections.ConfigDict, target_name: str, max_compiles: int = 12,
        with_eval: bool = True, log: Any = sys.stderr) -> compile_job.Report:
  """The report of the cheapest fitting variant (`Report.overrides` says what it changed).

  When nothing fits, the report of the last variant tried, `fits` False and `oom_message`
  saying why (state too large even fully sharded, one example per device too large, or the
  compile budget spent).
  """
  target = targets.parse(target_name)
  units = sharding.batch_size_per_unit(sharding.make_mesh(config.mesh, targets.devices(target)))
  accums = valid_accum_steps(config, units)
  if not accums:
    raise ValueError(f'config.batch_size={config.batch_size} is not divisible by accum_steps x '
                     f'the {units} devices the batch is split over')
  configured = (_remat(config), tuple(config.sharding_rules) == FSDP_RULES)
  # (remat, fsdp), cheapest first; a knob the config already sets stays set.
  kinds = [(r, f) for r in (False, True) for f in (False, True)
           if r >= configured[0] and f >= configured[1] and (not r or _has_transformer(config))]
  measured: dict[tuple[bool, bool], tuple[int, int, int]] = {}  # kind -> (accum, temp, state)
  last, compiles, available = None, 0, None

  for accum in accums:
    for remat, fsdp in kinds:
      variant = Variant(accum, remat, fsdp)
      guess = _predict(measured, remat, fsdp, accum, target.num_devices)
      if available is not None and guess is not None and guess > available * _SLACK:
        continue  # Even at its best, the measurements so far say it would not fit.
      if compiles >= max_compiles:
        return _give_up(last, f'no fitting variant within {max_compiles} compiles')
      overrides = variant.overrides(config)
      print(f'[fit] {target.name}: trying {overrides or "the config as it is"}', file=log,
            flush=True)
      report = compile_job.compile_for_target(apply(config, overrides), target_name,
                                              with_eval=False, count_flops=False)
      compiles += 1
      last = report
      print(f'[fit]   fits {report.fits}, per device {_need(report) or 0:,} bytes, compiled in '
            f'{report.compile_seconds:.0f} s' + ('' if report.fits else
                                                 f': {report.oom_message}'), file=log, flush=True)
      if report.fits:
        print(f'[fit] fits: {overrides or "as configured"}', file=log, flush=True)
        report.overrides = overrides
        # The search skipped these; the train step needs no second compile.
        chosen = apply(config, overrides)
        if with_eval:
          report.eval_step, report.flops_per_step = compile_job.eval_and_flops(chosen, target_name)
        else:
          report.flops_per_step = compile_job.xla_step_flops(chosen)
        return report
      available = _available(report)
      need = _need(report)
      state = report.per_device_bytes['params'] + report.per_device_bytes['optimizer']
      if need is not None:
        measured[(remat, fsdp)] = (accum, need - state, state)
      if fsdp and state > available:
        return _give_up(report, f'parameters and optimizer state alone need {state / 2**30:.2f} '
                        f'GiB per device, sharded over all {target.num_devices} devices '
                        f'({available / 2**30:.2f} GiB available)')
  return _give_up(last, f'one example per device per micro-batch (accum_steps={accums[-1]}) '
                  'with remat and FSDP still exceeds the memory')


def _predict(measured: dict[tuple[bool, bool], tuple[int, int, int]], remat: bool, fsdp: bool,
             accum: int, devices: int) -> float | None:
  """A lower bound of a variant's per-device bytes from a measured one: temporaries shrink at
  most in proportion to the micro-batch; FSDP divides the state by the devices, at best."""
  for kind in ((remat, fsdp), (remat, not fsdp)):
    if kind in measured:
      a0, temp0, state0 = measured[kind]
      state = state0 / devices if fsdp and not kind[1] else state0
      return state + temp0 * a0 / accum
  return None


def _has_transformer(config: ml_collections.ConfigDict) -> bool:
  """Whether the model has a ViT encoder (whose blocks `remat` recomputes)."""
  from vit_jax import models  # pylint: disable=g-import-not-at-top
  spec = models.MODEL_CONFIGS.get(config.model_name)
  return spec is not None and 'transformer' in spec


def _give_up(report: compile_job.Report | None, reason: str) -> compile_job.Report:
  if report is None:
    raise RuntimeError(f'--fit found nothing to compile: {reason}')
  report.fits = False
  report.oom_message = f'Cannot fit: {reason}. Last compiler message: {report.oom_message}'
  return report
