r"""Swin Transformer trained from scratch: the official ImageNet-1k recipe, and a tiny CIFAR-10 one.

ImageNet-1k (Liu et al. 2021, official config; recipes.md): AdamW β 0.9/0.999, eps 1e-8, weight
decay 0.05 on kernels only (none on biases, LayerNorms and relative position bias tables), batch
1024, lr 5e-4 × batch/512, 300 epochs with 20 of warmup then cosine, global-norm clip 5, label
smoothing 0.1, drop path 0.2 / 0.3 / 0.5 (T / S / B), RandAugment rand-m9-mstd0.5-inc1, mixup 0.8
/ cutmix 1.0 (switch 0.5), random erasing 0.25 ('pixel'). Swin-T reaches 81.2-81.4% top-1.

  python -m vit_jax.main --config=configs/swin.py:Swin-T --workdir=/tmp/swin_t
  python -m vit_jax.main --config=configs/swin.py:cifar10 --workdir=/tmp/swin_cifar

Arguments: Swin-T, Swin-S or Swin-B (ImageNet-1k, 224 px), or `cifar10` (a 3-stage Swin of
2.2M parameters on 32 px images: patch 2, window 4, widths 64/128/256).

Differences from the official recipe, all from the shared training loop:
- the schedule warms up from 0 and decays to 0 (official: from 5e-7, to 5e-6);
- crops are resized bilinearly (official: bicubic); colour jitter 0.4 is absent, as in the
  official pipeline, where timm disables it whenever RandAugment is on.
Not run here (no accelerator, no ImageNet on this machine).
"""

import ml_collections

from vit_jax import base_config

DROP_PATH = {'Swin-T': 0.2, 'Swin-S': 0.3, 'Swin-B': 0.5}
IMAGENET_TRAIN_EXAMPLES = 1_281_167


def _swin_recipe(config: ml_collections.ConfigDict, steps_per_epoch: int) -> None:
  """The optimizer, schedule and regularisation shared by both presets."""
  config.optimizer.name = 'adamw'
  config.optimizer.b1 = 0.9
  config.optimizer.b2 = 0.999
  config.optimizer.eps = 1e-8
  config.optimizer.weight_decay = 0.05
  # Our Swin's only decayed parameters are Dense/Conv kernels: biases, LayerNorm scales and the
  # relative position bias tables are left alone, as in the official `no_weight_decay` lists.
  config.optimizer.decay_pattern = r'kernel$'
  config.lr.base = 5e-4 * config.batch_size / 512
  config.lr.decay_type = 'cosine'
  config.lr.warmup_steps = 20 * steps_per_epoch
  config.grad_clip_norm = 5.0
  config.label_smoothing = 0.1  # Applied before mixing, as timm's mixup_target does.
  config.mixup = ml_collections.ConfigDict(dict(
      mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, prob=1.0))


def get_config(arg: str = 'Swin-T'):
  config = base_config.get_config()
  if arg in DROP_PATH:
    config.model_name = arg
    config.model = {'stochastic_depth': DROP_PATH[arg]}
    config.dataset = 'imagenet2012'
    config.train_split = 'train'
    config.eval_split = 'validation'
    config.image_size = 224
    config.pp_train = ('inception_crop(area_min=8)|flip_lr|randaug("rand-m9-mstd0.5-inc1")|'
                       'normalize("imagenet")|random_erasing(0.25)')
    # Resize to 224 / 0.875 = 256, centre crop 224 (timm's crop_pct 0.875).
    config.pp_eval = 'resize_small(256)|central_crop|normalize("imagenet")'
    config.batch_size = 1024
    config.eval_batch_size = 1000
    config.num_epochs = 300.
    _swin_recipe(config, IMAGENET_TRAIN_EXAMPLES // config.batch_size)
    config.log_every = 100
    config.eval_every = 5000
    config.checkpoint_every = 5000
  elif arg == 'cifar10':
    config.model_name = 'Swin-T'
    config.model = dict(patch_size=2, embed_dim=64, depths=(2, 2, 2), num_heads=(2, 4, 8),
                        window_size=4, stochastic_depth=0.1)
    config.dataset = 'cifar10'
    config.train_split = 'train'
    config.eval_split = 'test'
    config.image_size = 32
    config.cache_train = True
    config.pp_train = ('random_crop(pad=4)|flip_lr|randaug("rand-m9-mstd0.5-inc1")|'
                       'normalize("cifar10")|random_erasing(0.25)')
    config.pp_eval = 'normalize("cifar10")'
    config.batch_size = 128
    config.eval_batch_size = 500
    config.num_epochs = 100.
    _swin_recipe(config, 50_000 // config.batch_size)
    config.lr.base = 5e-4  # The recipe's rule would give 1.25e-4 at batch 128; not tuned here.
    config.lr.warmup_steps = 5 * 390  # A 20-epoch warmup is a fifth of this short schedule.
    config.log_every = 100
    config.eval_every = 3900
    config.checkpoint_every = 3900
  else:
    raise ValueError(f"Unknown argument {arg!r}; expected one of {sorted(DROP_PATH)} or "
                     "'cifar10'")
  return config
