r"""DeiT (Touvron et al. 2021): data-efficient ViT training, with a distillation token.

ImageNet-1k recipe (recipes.md): AdamW lr 5e-4 × batch/512, wd 0.05, 300 epochs with 5 of
warmup, cosine, label smoothing 0.1, RandAugment m9 mstd 0.5, mixup 0.8 / cutmix 1.0, random
erasing 0.25, repeated augmentation (3), stochastic depth 0.1, no dropout; hard distillation from
a CNN teacher through the `dist` token (DeiT-B: 83.4% distilled vs 81.8% without, not run here).

  python -m vit_jax.main --config=configs/deit.py:ViT-B_16 --workdir=/tmp/deit_b \
      --config.distillation.teacher_path=teacher.npz

CIFAR-10 demonstration, one command per step (the CIFAR-10 baseline ViT, quick schedule, with and
without distillation from the CIFAR-10 baseline CNN trained first):

  python -m vit_jax.main --config=configs/cifar10_cnn.py:quick --workdir=workdir/teacher
  python -m vit_jax.main --config=configs/deit.py:cifar10 --workdir=workdir/student \
      --config.distillation.teacher_path=workdir/teacher/model.npz
  python -m vit_jax.main --config=configs/cifar10_scratch.py:quick --workdir=workdir/plain

What the three runs reached here (top-1 on all 10,000 test images) and how long they took is
in BENCHMARKS.md ("Training runs of the configs"): distillation from a CNN that beats the small
ViT lifts it on this short schedule, the convolutional teacher's inductive bias reaching the
student through the dist token.
"""

import ml_collections

from vit_jax.training import base_config
from vit_jax.training import config_args


def get_config(arg: str = 'ViT-B_16'):
  """`arg`: a ViT zoo name (ImageNet-1k), or `cifar10` (the demonstration)."""
  args = config_args.parse_arg(arg, model='ViT-B_16', cifar10=False)
  config = base_config.get_config()
  config.distillation = ml_collections.ConfigDict(dict(
      teacher_model='BiT-M-R50x1', teacher_path='', teacher_overrides={}, kind='hard',
      alpha=0.5, temperature=1.0))
  if args.cifar10:
    base_config.cifar10_baseline(config, quick=True)
    config.model_name = 'ViT-CIFAR_4'
    config.model = {'distilled': True}
    config.distillation.teacher_model = 'CNN-CIFAR'
    return base_config.with_model_fields(config)
  if not args.model.startswith('ViT-'):
    raise ValueError(f"Unknown argument {args.model!r}; expected a ViT zoo name or 'cifar10'")

  config.model_name = args.model
  config.model = {'distilled': True, 'head_zero_init': False,
                  'transformer': {'dropout_rate': 0.0, 'stochastic_depth': 0.1}}
  base_config.timm_imagenet_recipe(config, warmup_epochs=5)
  config.repeated_augmentation = 3
  config.grad_clip_norm = 0.0
  return base_config.with_model_fields(config)
