r"""The CIFAR-10 baseline's 3-block CNN on CIFAR-10, the CNN half of a CNN-vs-ViT pair.

(3x3 conv, ReLU, 2x2 max-pool) at 32/64/128 channels, Dense 256, ReLU, head: 620,362 parameters.
Trained with exactly the recipe of configs/cifar10_scratch.py (`base_config.cifar10_baseline`:
AdamW lr 3e-4, wd 0.05, batch 128, 50 epochs, random crop 32 with padding 4 + horizontal flip,
CIFAR mean/std), so the two configs differ only in the model.

  python -m vit_jax.main --config=configs/cifar10_cnn.py --workdir=/tmp/cifar10_cnn
  python -m vit_jax.main --config=configs/cifar10_cnn.py:quick --workdir=/tmp/quick_cnn

Argument `quick`: the same short schedule as `cifar10_scratch.py:quick`, for a CPU (the DeiT
demonstration's teacher); its measured accuracy and time are in BENCHMARKS.md.
Full schedule (50 epochs): 85-90% test accuracy published for this baseline (82-85% for its
ViT); not run here.
"""

from vit_jax.training import base_config
from vit_jax.training import config_args


def get_config(arg: str = ''):
  args = config_args.parse_arg(arg, quick=False)
  config = base_config.cifar10_baseline(base_config.get_config(), quick=args.quick)
  config.model_name = 'CNN-CIFAR'
  return base_config.finish(config, args)
