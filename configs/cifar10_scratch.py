r"""The seeds' small ViT trained from scratch on CIFAR-10.

4 layers, width 128, 4 heads, patch 4, MLP 512, pre-LN, [CLS] head; AdamW lr 3e-4, wd 0.05,
batch 128, 50 epochs, random crop 32 with padding 4 + horizontal flip, CIFAR mean/std.

  python -m vit_jax.main --config=configs/cifar10_scratch.py --workdir=/tmp/cifar10_vit
  python -m vit_jax.main --config=configs/cifar10_scratch.py:quick --workdir=/tmp/quick

Argument `quick`: the README's main job, a short schedule for a 2-core CPU.
Measured (2-core CPU, jax 0.10.2):
  quick: 53.8% top-1 / 94.5% top-5 on all 10,000 test images after 1,000 steps (244 img/s once
    warm; 11 min 43 s end to end with another job on the CPU).
  full (50 epochs): expected 82-85% test accuracy (the seeds' report); not run here.
"""

from vit_jax import base_config


def get_config(arg: str = ''):
  if arg not in ('', 'quick'):
    raise ValueError(f"Unknown argument {arg!r}; expected '' or 'quick'")
  config = base_config.seeds_cifar10(base_config.get_config(), quick=arg == 'quick')
  config.model_name = 'ViT-CIFAR_4'
  return config
