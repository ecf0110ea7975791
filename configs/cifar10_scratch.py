r"""The seeds' small ViT trained from scratch on CIFAR-10.

4 layers, width 128, 4 heads, patch 4, MLP 512, pre-LN, [CLS] head; AdamW lr 3e-4, wd 0.05,
batch 128, 50 epochs, random crop 32 with padding 4 + horizontal flip, CIFAR mean/std.

  python -m vit_jax.main --config=configs/cifar10_scratch.py --workdir=/tmp/cifar10_vit
  python -m vit_jax.main --config=configs/cifar10_scratch.py:quick --workdir=/tmp/quick

Argument `quick`: the README's main job, a short schedule for a 2-core CPU.
Measured (2-core CPU, jax 0.10.2): see the README's quick start; numbers filled in below.
  quick: QUICK_RESULT
  full (50 epochs): expected 82-85% test accuracy (the seeds' report); not run here.
"""

from vit_jax import base_config


def get_config(arg: str = ''):
  config = base_config.get_config()
  config.model_name = 'ViT-CIFAR_4'
  config.dataset = 'cifar10'
  config.train_split = 'train'
  config.eval_split = 'test'
  config.image_size = 32
  config.pp_train = 'random_crop(pad=4)|flip_lr|normalize("cifar10")'
  config.pp_eval = 'normalize("cifar10")'
  config.cache_train = True

  config.batch_size = 128
  config.eval_batch_size = 500
  config.num_epochs = 50.
  config.optimizer.name = 'adamw'
  config.optimizer.weight_decay = 0.05
  config.lr.base = 3e-4
  config.lr.warmup_steps = 390  # One epoch.
  config.lr.decay_type = 'cosine'
  config.grad_clip_norm = 0.0

  config.log_every = 100
  config.eval_every = 3900
  config.checkpoint_every = 3900

  if arg == 'quick':
    config.num_epochs = None
    config.total_steps = 1500
    config.lr.base = 1e-3
    config.lr.warmup_steps = 100
    config.log_every = 100
    config.eval_every = 1500
    config.checkpoint_every = 500
  elif arg:
    raise ValueError(f"Unknown argument {arg!r}; expected '' or 'quick'")
  return config
