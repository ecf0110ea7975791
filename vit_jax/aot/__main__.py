r"""Will it fit? Compiles a config's train and eval steps for a target you do not have.

  python -m vit_jax.aot --config=configs/pretrain.py:ViT-B_16,imagenet2012 --target=v5e-8
  python -m vit_jax.aot --config=configs/pretrain.py:ViT-B_16,imagenet2012 --target=v5e-8 --fit
  python -m vit_jax.aot --config=configs/pretrain.py:ViT-B_16,imagenet2012 --target=h100-8 \
      --config.model.dtype=bfloat16 --json=/tmp/b16_h100.json

Targets: v4-N, v5p-N (N TensorCores), v5e-N, v6e-N (N chips), a100-N, h100-N, h200-N, b200-N
(N GPUs per node); `xK` for K slices or nodes. Needs the extra of the target's kind:
pip install -e ".[tpu]" or ".[cuda]". Nothing runs on an accelerator: the numbers are the
compiler's (memory analysis, TPU cost model), not timings.
"""

import os

# The process needs no accelerator: compile-only devices come from libtpu / the CUDA plugin, and
# a plugin without its hardware must not become the default backend.
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

# pylint: disable=g-import-not-at-top,wrong-import-position
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from vit_jax.aot import compile_job
from vit_jax.aot import fit as fit_lib
from vit_jax.aot import targets
from vit_jax.training import config_args

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config: configs/FILE.py[:ARGS].', lock_config=True)
_TARGET = flags.DEFINE_string('target', None, 'e.g. v5e-8, v4-32, v5p-128, h100-8, h200-8x2.')
_FIT = flags.DEFINE_bool('fit', False, 'Search accum_steps, remat and FSDP for a variant whose '
                         'train and eval steps fit, cheapest first, and print its overrides '
                         '(and fewer accum_steps than configured where they fit).')
_JSON = flags.DEFINE_string('json', None, 'Write the full report here as JSON.')
_EVAL = flags.DEFINE_bool('eval', True, 'Also compile the eval step; it must fit too.')
_EXECUTABLE = flags.DEFINE_string('save_executable', None, 'Write the serialized train '
                                  'executable here, for reuse on the target.')
_ATTENTION = flags.DEFINE_enum('attention', 'auto', ['auto', 'xla'], "'xla': no cuDNN flash "
                               'attention on GPU targets (to compare against it).')
_MAX_COMPILES = flags.DEFINE_integer('max_compiles', 12, 'Compile budget of --fit.')
flags.mark_flags_as_required(['config', 'target'])

GIB = 2**30


def _gib(value):
  return 'n/a' if value is None else f'{value / GIB:.2f} GiB'


def format_report(report: compile_job.Report) -> str:
  """The short human-readable report."""
  b = report.per_device_bytes
  lines = [f'{report.config["model_name"]} batch {report.config["batch_size"]} '
           f'{report.config["dtype"]} on {report.target} ({report.devices} x '
           f'{report.device_kind}, {_gib(report.device_memory_bytes)} each)',
           f'fits: {report.fits}' + (f'  ({report.oom_message})' if report.oom_message else ''),
           f'per device: params {_gib(b["params"])}, optimizer {_gib(b["optimizer"])}, '
           f'temporaries {_gib(b["temporaries"])}, total {_gib(b["total"])}',
           f'compile: {report.compile_seconds:.1f} s']
  if report.flops_per_step:
    lines.append(f'FLOPs per step: XLA {report.flops_per_step:.3e}, analytic model '
                 f'{report.model_flops_per_step or 0:.3e}')
  if report.estimated_step_seconds:
    mfu = f', MFU {report.estimated_mfu:.1%}' if report.estimated_mfu else ''
    lines.append(f'estimated step: {report.estimated_step_seconds * 1e3:.1f} ms{mfu} '
                 f'(compiler estimate)')
  else:
    lines.append(f'no step-time estimate: {report.estimate_note}')
  for kind, c in report.collectives.items():
    lines.append(f'{kind}: {c["ops"]} ops ({c["ops_in_accumulation_loop"]} inside the '
                 f'accumulation loop), {c["runs_per_step"]} runs, '
                 f'{_gib(c["bytes_per_step"])} per step')
  if report.fused_attention_kernels:
    f = report.fused_attention_kernels
    lines.append(f'cuDNN fused attention kernels: {f["forward"]} forward, {f["backward"]} '
                 'backward')
  if report.eval_step:
    lines.append(f'eval step: fits {report.eval_step["fits"]}, total '
                 f'{_gib(report.eval_step.get("total"))}')
  if report.overrides:
    lines.append('--fit chose: ' + ' '.join(f'--config.{k}={v!r}'
                                             for k, v in report.overrides.items()))
  if report.smaller_accum_steps:
    lines.append(f'--fit: fewer accumulation steps than the configured '
                 f'{report.config["accum_steps"]} fit too (fewer steps run faster): '
                 f'--config.accum_steps={report.smaller_accum_steps}')
  return '\n'.join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  try:
    if _FIT.value:
      report = fit_lib.fit(config, _TARGET.value, max_compiles=_MAX_COMPILES.value,
                           with_eval=_EVAL.value)
    else:
      report = compile_job.compile_for_target(config, _TARGET.value, with_eval=_EVAL.value,
                                              executable_path=_EXECUTABLE.value,
                                              attention=_ATTENTION.value)
  except targets.MissingExtraError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(format_report(report), flush=True)
  if _JSON.value:
    with open(_JSON.value, 'w', encoding='utf-8') as f:
      f.write(report.to_json())
  return 0 if report.fits else 1


if __name__ == '__main__':
  app.run(main, flags_parser=config_args.flags_parser)
