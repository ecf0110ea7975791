"""Fit before launch: the cheapest variant of a config that fits the target's memory.

Only knobs that leave the optimizer step's mathematics alone are searched: gradient accumulation
(`accum_steps`: the same gradient of the same batch, skipped images and mixup included, except
that BatchNorm normalises each micro-batch by its own statistics, which the report and the log
say: `Report.accumulation_caveats`), rematerialization of the encoder blocks
(`model.transformer.remat`, recomputed activations) and FSDP sharding rules (`sharding_rules`:
parameters and optimizer state split over the data axis). Layer scan is left as configured: it
changes the parameter tree (stacked `encoderblock`), hence checkpoints.

Order, cheapest first: the fewest accumulation steps, then no recomputation before
recomputation, and per-device state replicated before sharded (FSDP adds all-gathers). XLA's TPU
cost model cannot rank the variants: it counts the accumulation loop's body once. The first
variant in this order whose train step and eval step both fit is returned. Nothing about XLA's
temporaries is predictable across programs (FSDP shards the gradient temporaries too; more
accumulation steps can take more temporaries, not fewer), so a variant is skipped without a
compile only where a true lower bound rules it out: its parameters and optimizer state, which
accumulation and remat leave alone, alone exceed the memory. Where the configured
`accum_steps` is above 1, fewer steps are compiled too, and the report says which fit.
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


def valid_accum_steps(config: ml_collections.ConfigDict, units: int) -> list[int]:
  """Accumulation steps that split the batch evenly over micro-batches and devices."""
  batch, start = int(config.batch_size), int(config.accum_steps)
  return [a for a in range(start, batch // units + 1) if batch % (a * units) == 0]


def fit(config: ml_collections.ConfigDict, target_name: str, max_compiles: int = 12,
        with_eval: bool = True, log: Any = sys.stderr) -> compile_job.Report:
  """The report of the cheapest fitting variant (`Report.overrides` says what it changed).

  A variant fits when its train step and, with `with_eval`, its eval step fit. When the chosen
  variant keeps a configured `accum_steps` above 1, fewer steps are compiled (fewest first) and
  the fewest that fit go to `Report.smaller_accum_steps`. When nothing fits, the report of the
  last variant tried, `fits` False and `oom_message` saying why: parameters and optimizer state
  too large even fully sharded, every variant compiled and none fitting, or the compile budget
  spent (which proves nothing about the variants left).
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
  search = _Search(config, target_name, max_compiles, with_eval, log)
  for accum in accums:
    for remat, fsdp in kinds:
      report = search.try_variant(Variant(accum, remat, fsdp))
      if report is None or not report.fits:
        if search.stop:
          return _give_up(search.last, search.stop)
        continue
      chosen = Variant(accum, remat, fsdp)
      print(f'[fit] fits: {report.overrides or "as configured"}', file=log, flush=True)
      for caveat in report.accumulation_caveats:  # accum_steps > 1 with BatchNorm.
        print(f'[fit] caveat: {caveat}', file=log, flush=True)
      if accum == accums[0] and accum > 1:
        report.smaller_accum_steps = search.fewest_accum_steps(chosen, units)
      return report
  reason = ('no variant fits: every one with at least the configured accum_steps up to '
            f'{accums[-1]} (one example per device per micro-batch) was compiled, or its '
            'parameters and optimizer state alone, or its eval step, exceed the memory')
  if search.eval_misses:
    reason += (f'; the eval step (eval_batch_size={config.eval_batch_size}) did not fit where '
               f'the train step did, with {" or ".join(search.eval_misses)}')
  return _give_up(search.last, reason)


class _Search:
  """Compiles variants for `fit`, skipping only what a lower bound proves cannot fit."""

  def __init__(self, config: ml_collections.ConfigDict, target_name: str, max_compiles: int,
               with_eval: bool, log: Any):
    self.config, self.target_name, self.log = config, target_name, log
    self.max_compiles, self.with_eval = max_compiles, with_eval
    self.compiles = 0
    self.last: compile_job.Report | None = None
    self.stop: str | None = None  # Why the search ends without a fit.
    self.available: int | None = None
    self.state: dict[bool, int] = {}  # fsdp -> params + optimizer bytes per device.
    # (remat, fsdp) -> (eval report, {} without eval; XLA's step FLOPs): neither depends on
    # accumulation.
    self.evals: dict[tuple[bool, bool], tuple[dict[str, Any], float | None]] = {}

  def try_variant(self, variant: Variant) -> compile_job.Report | None:
    """The variant's report (fits counting the eval step), or None where it is ruled out."""
    state = self.state.get(variant.fsdp)
    if self.available is not None and state is not None and state > self.available:
      return None  # Accumulation and remat leave the state as it is: it cannot fit.
    key = (variant.remat, variant.fsdp)
    if key in self.evals and not self.evals[key][0].get('fits', True):
      return None  # Its eval step, which has no accumulation, does not fit.
    if self.compiles >= self.max_compiles:
      self.stop = (f'no fitting variant within {self.max_compiles} compiles (--max_compiles); '
                   f'untried from {variant} on')
      return None
    overrides = variant.overrides(self.config)
    print(f'[fit] {self.target_name}: trying {overrides or "the config as it is"}',
          file=self.log, flush=True)
    report = compile_job.compile_for_target(apply(self.config, overrides), self.target_name,
                                            with_eval=False, count_flops=False)
    self.compiles += 1
    self.last = report
    report.overrides = overrides
    b = report.per_device_bytes
    self.state[variant.fsdp] = b['params'] + b['optimizer']
    self.available = min(self.available or _available(report), _available(report))
    if report.fits:
      if key not in self.evals:
        chosen = apply(self.config, overrides)
        self.evals[key] = (compile_job.eval_and_flops(chosen, self.target_name)
                           if self.with_eval else
                           ({}, compile_job.xla_step_flops(chosen)))
      eval_step, report.flops_per_step = self.evals[key]
      report.eval_step = eval_step or None
      compile_job.count_eval_step(report)
    what = 'total' if b['total'] is not None else 'temporaries'
    print(f'[fit]   fits {report.fits}, per device {what} {(b[what] or 0) / 2**30:.2f} GiB, '
          f'compiled in {report.compile_seconds:.0f} s' + ('' if report.fits else
                                                          f': {report.oom_message}'),
          file=self.log, flush=True)
    if variant.fsdp and self.state[True] > self.available:
      self.stop = (f'parameters and optimizer state alone need {self.state[True] / 2**30:.2f} '
                   f'GiB per device, sharded over all {report.devices} devices '
                   f'({self.available / 2**30:.2f} GiB available)')
    return report

  @property
  def eval_misses(self) -> list[str]:
    """The (remat, FSDP) settings whose eval step did not fit, in words."""
    return [f'remat={remat} fsdp={fsdp}' for (remat, fsdp), (report, _) in self.evals.items()
            if not report.get('fits', True)]

  def fewest_accum_steps(self, chosen: Variant, units: int) -> int | None:
    """The fewest accumulation steps below the configured ones that fit with `chosen`'s remat
    and FSDP, or None."""
    fewer = [a for a in range(1, chosen.accum_steps)
             if int(self.config.batch_size) % (a * units) == 0]
    for accum in fewer:
      report = self.try_variant(dataclasses.replace(chosen, accum_steps=accum))
      if report is not None and report.fits:
        print(f'[fit] accum_steps={accum} fits too (configured: {chosen.accum_steps})',
              file=self.log, flush=True)
        return accum
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
