r"""The seeds' 3-block CNN baseline on CIFAR-10, the CNN half of a CNN-vs-ViT pair.

(3x3 conv, ReLU, 2x2 max-pool) at 32/64/128 channels, Dense 256, ReLU, head: 620,362 parameters.
Trained with exactly the recipe of configs/cifar10_scratch.py (`base_config.seeds_cifar10`:
AdamW lr 3e-4, wd 0.05, batch 128, 50 epochs, random crop 32 with padding 4 + horizontal flip,
CIFAR mean/std), so the two configs differ only in the model.

  python -m vit_jax.main --config=configs/cifar10_cnn.py --workdir=/tmp/cifar10_cnn
  python -m vit_jax.main --config=configs/cifar10_cnn.py:quick --workdir=/tmp/quick_cnn

Argument `quick`: the same short schedule as `cifar10_scratch.py:quick`, for a CPU.
Expected:
  quick: 65.2% top-1 on all 10,000 test images (measured; the DeiT demonstration's teacher);
  full (50 epochs): 85-90% test accuracy (the seeds' report, vs 82-85% for their ViT); not run
    here.
"""

from vit_jax import base_config
from vit_jax import config_args


def get_config(arg: str = ''):
  args = config_args.parse_arg(arg, quick=False)
  config = base_config.seeds_cifar10(base_config.get_config(), quick=args.quick)
  config.model_name = 'CNN-CIFAR'
  return config
