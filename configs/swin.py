r"""Swin Transformer trained from scratch: the official ImageNet-1k recipe, and a tiny CIFAR-10 one.

ImageNet-1k (Liu et al. 2021, official config; recipes.md): AdamW β 0.9/0.999, eps 1e-8, weight
decay 0.05 on kernels only (none on biases, LayerNorms and relative position bias tables), batch
1024, lr 5e-4 × batch/512, 300 epochs with 20 of warmup then cosine, global-norm clip 5, label
smoothing 0.1, drop path 0.2 / 0.3 / 0.5 (T / S / B), RandAugment rand-m9-mstd0.5-inc1, mixup 0.8
/ cutmix 1.0 (switch 0.5), random erasing 0.25 ('pixel'). Expected: Swin-T 81.2-81.4% top-1 (published).

  python -m vit_jax.main --config=configs/swin.py:Swin-T --workdir=/tmp/swin_t
  python -m vit_jax.main --config=configs/swin.py:cifar10 --workdir=/tmp/swin_cifar

Arguments: Swin-T, Swin-S or Swin-B (ImageNet-1k, 224 px), or `cifar10` (a 3-stage Swin of
2.2M parameters on 32 px images: patch 2, window 4, widths 64/128/256).

Differences from the official recipe, all from the shared training loop:
- the schedule warms up from 0 and decays to 0 (official: from 5e-7, to 5e-6);
- the eval resize rounds the longer side (torchvision truncates it: at most 1 px apart);
- it trains on `train[:99%]` and evaluates `val` and a `minival` of the other 1%, as
  big_vision's ImageNet configs (the official script trains on all of `train`).
Crops are timm's RandomResizedCrop sampler with a bicubic resize and the eval resize is PIL's
bicubic, as the official pipeline; colour jitter 0.4 is absent there too (timm disables it
whenever RandAugment is on).
Not run here (no accelerator, no ImageNet on this machine).
"""

import ml_collections

from vit_jax.training import base_config
from vit_jax.training import config_args

DROP_PATH = {'Swin-T': 0.2, 'Swin-S': 0.3, 'Swin-B': 0.5}


def get_config(arg: str = 'Swin-T'):
  """`arg`: Swin-T, Swin-S or Swin-B (ImageNet-1k), or `cifar10`."""
  args = config_args.parse_arg(arg, model='Swin-T', cifar10=False)
  config = base_config.get_config()
  if not args.cifar10:
    if args.model not in DROP_PATH:
      raise ValueError(f"Unknown argument {args.model!r}; expected one of {sorted(DROP_PATH)} or "
                       "'cifar10'")
    config.model_name = args.model
    config.model = {'stochastic_depth': DROP_PATH[args.model]}
    # Our Swin's only decayed parameters are Dense/Conv kernels: biases, LayerNorm scales and the
    # relative position bias tables are left alone, as in the official `no_weight_decay` lists.
    base_config.timm_imagenet_recipe(config, warmup_epochs=20)
    config.grad_clip_norm = 5.0
    return base_config.finish(config, args)
  base_config.cifar10_baseline(config, quick=False)  # Data, batch 128, AdamW wd 0.05, logging.
  config.model_name = 'Swin-T'
  config.model = dict(patch_size=2, embed_dim=64, depths=(2, 2, 2), num_heads=(2, 4, 8),
                      window_size=4, stochastic_depth=0.1)
  config.pp_train = ('random_crop(pad=4)|flip_lr|randaug("rand-m9-mstd0.5-inc1")|'
                     'normalize("cifar10")|random_erasing(0.25)')
  config.num_epochs = 100.
  config.lr.base = 5e-4  # The recipe's rule would give 1.25e-4 at batch 128; not tuned here.
  config.lr.warmup_steps = 5 * 390  # A 20-epoch warmup is a fifth of this short schedule.
  config.grad_clip_norm = 5.0
  config.label_smoothing = 0.1
  config.mixup = ml_collections.ConfigDict(dict(
      mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, prob=1.0))
  return base_config.finish(config, args)
