r"""Fine-tuning a hybrid R+ViT checkpoint: the ViT fine-tuning recipe (configs/finetune.py).

The original library fine-tuned its hybrids exactly like the plain ViTs: SGD momentum 0.9, no
weight decay, clip 1, batch 512 (8 micro-batches), warmup then cosine, 384 px, Inception crop +
flip, pixels in [-1, 1], zero-initialised head. The position embedding follows the ResNet's
feature map: R50+ViT-B/16 at 384 px has a 24x24 grid (577 rows), resized from 14x14 at 224.

  python -m vit_jax.main --config=configs/finetune_hybrid.py:R50+ViT-B_16,cifar10 \
      --workdir=/tmp/ft_hybrid --config.pretrained_path=imagenet21k_R50+ViT-B_16.npz

Arguments: MODEL (a hybrid zoo name: R50+ViT-B_16, R26+ViT-S_32, R26+ViT-B_32, R50+ViT-L_32,
R+ViT-Ti_16) and DATASET (a preset of configs/finetune.py). Published result of the original
library with the ImageNet-21k R50+ViT-B/16 (recipes.md): 98.72% cifar10 (3.9 h on 8 A100),
90.88% cifar100, 83.72% imagenet2012 — not reproduced here (no accelerator, no download).
"""

import importlib.util
import os

from vit_jax import models


def _finetune_module():
  """configs/finetune.py, loaded by path: config files are not an importable package."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'finetune.py')
  spec = importlib.util.spec_from_file_location('finetune_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg: str = 'R50+ViT-B_16,cifar10'):
  """`arg` is 'MODEL,DATASET' with MODEL a hybrid."""
  model_name = arg.split(',')[0]
  config = models.MODEL_CONFIGS.get(model_name)
  if config is None or config.get('resnet') is None:
    hybrids = sorted(n for n, c in models.MODEL_CONFIGS.items() if c.get('resnet') is not None)
    raise ValueError(f'configs/finetune_hybrid.py fine-tunes hybrid models ({", ".join(hybrids)}), '
                     f'got {model_name!r}')
  return _finetune_module().get_config(arg)
