r"""The CIFAR-10 baseline ViT trained from scratch on CIFAR-10.

4 layers, width 128, 4 heads, patch 4, MLP 512, pre-LN, [CLS] head; AdamW lr 3e-4, wd 0.05,
batch 128, 50 epochs, random crop 32 with padding 4 + horizontal flip, CIFAR mean/std.

  python -m vit_jax.main --config=configs/cifar10_scratch.py --workdir=/tmp/cifar10_vit
  python -m vit_jax.main --config=configs/cifar10_scratch.py:quick --workdir=/tmp/quick

Argument `quick`: the README's main job, a short schedule (1,000 steps) for a CPU; what it
reached here, and how long it took, is in BENCHMARKS.md ("Training runs of the configs").
Full schedule (50 epochs): 82-85% test accuracy published for this baseline; not run here.
"""

from vit_jax.training import base_config
from vit_jax.training import config_args


def get_config(arg: str = ''):
  args = config_args.parse_arg(arg, quick=False)
  config = base_config.cifar10_baseline(base_config.get_config(), quick=args.quick)
  config.model_name = 'ViT-CIFAR_4'
  return base_config.finish(config, args)
