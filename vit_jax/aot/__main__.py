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
from vit_jax.checkpoint import paths
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
  print(compile_job.format_report(report), flush=True)
  if _JSON.value:
    paths.write_text(_JSON.value, report.to_json())  # Local or gs://, written whole.
  return 0 if report.fits else 1


if __name__ == '__main__':
  app.run(main, flags_parser=config_args.flags_parser)
