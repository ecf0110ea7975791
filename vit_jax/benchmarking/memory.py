"""Per-device memory of the train step: data parallel against FSDP, without running it."""

from __future__ import annotations

import sys
from typing import Sequence

import jax

from vit_jax.benchmarking import report
from vit_jax.training import base_config
from vit_jax.training import job as job_lib
from vit_jax.training import settings as settings_lib
from vit_jax.training import sharding


def memory_table(model_names: Sequence[str], batch: int, resolution: int, dtype: str,
                 num_classes: int) -> str:
  """Per-device bytes of the Adam train step, data parallel vs FSDP over all devices.

  Parameters and optimizer state are counted from their shardings; arguments, outputs and
  temporaries come from XLA's compiled memory analysis (`training.job.Job.memory_analysis`).
  Run with `XLA_FLAGS=--xla_force_host_platform_device_count=8` to see 8 devices on a CPU.
  """
  mib = report.mib
  mesh = sharding.make_mesh((('data', -1),))
  out = [f'Per-device memory of the Adam train step, batch {batch}, {resolution} px, '
         f'{dtype}, {mesh.size} devices ({jax.devices()[0].platform}); MiB.', '',
         '| model | layout | params | optimizer state | params + optimizer | XLA arguments | '
         'XLA temporaries |', '|---|---|---:|---:|---:|---:|---:|']
  for name in model_names:
    totals = {}
    for layout, rules in (('data parallel', ()), ('FSDP', (('.*', 'fsdp'),))):
      config = base_config.get_config()
      config.model_name = name
      config.model = {'dtype': dtype}
      config.image_size = resolution
      config.batch_size = batch
      config.optimizer.name = 'adam'
      config.sharding_rules = rules
      settings = settings_lib.prepare(base_config.with_model_fields(config),
                                      settings_lib.DataFacts(num_classes=num_classes), mesh)
      print(f'[memory] {name} {layout} ...', file=sys.stderr, flush=True)
      stats = job_lib.build(settings, mesh).memory_analysis()
      totals[layout] = stats['params_bytes'] + stats['opt_state_bytes']
      out.append(f"| {name} | {layout} | {mib(stats['params_bytes'])} | "
                 f"{mib(stats['opt_state_bytes'])} | {mib(totals[layout])} | "
                 f"{mib(stats['argument_bytes'])} | {mib(stats['temp_bytes'])} |")
    out.append(f"| {name} | FSDP / DP | | | {totals['FSDP'] / totals['data parallel']:.3f} | | |")
  return '\n'.join(out)
