r"""Fine-tuning a pre-trained checkpoint as in the ViT paper (the original library's recipe).

SGD momentum 0.9, no weight decay, global-norm clip 1, batch 512 (8 micro-batches of 64),
warmup then cosine, 384 px, Inception crop + flip, pixels in [-1, 1], zero-initialised head.

  python -m vit_jax.main --config=configs/finetune.py:ViT-B_16,cifar10 --workdir=/tmp/ft \
      --config.pretrained_path=imagenet21k_ViT-B_16.npz

Arguments: MODEL (any zoo name, e.g. ViT-B_16, ViT-L_16, R50+ViT-B_16) and DATASET (a preset
below). Published results of the original library with ImageNet-21k checkpoints (recipes.md):
ViT-B/16 99.02% cifar10 (2.2 h on 8 A100), 92.06% cifar100, 84.53% imagenet2012 — not
reproduced here (no accelerator, no checkpoint download on this machine).
"""

from vit_jax import base_config

# dataset: (train split, eval split, total steps, warmup steps, base lr)
PRESETS = {
    'cifar10': ('train[:98%]', 'test', 10_000, 500, 0.03),
    'cifar100': ('train[:98%]', 'test', 10_000, 500, 0.03),
    'imagenet2012': ('train[:99%]', 'validation', 20_000, 500, 0.03),
    'oxford_iiit_pet': ('train[:90%]', 'test', 500, 100, 0.003),
    'oxford_flowers102': ('train[:90%]', 'test', 500, 100, 0.003),
}


def get_config(arg: str = 'ViT-B_16,cifar10'):
  """`arg` is 'MODEL,DATASET'."""
  try:
    model_name, dataset = arg.split(',')
  except ValueError:
    raise ValueError(f"configs/finetune.py takes 'MODEL,DATASET', got {arg!r}") from None
  if dataset not in PRESETS:
    raise ValueError(f'Unknown fine-tuning dataset {dataset!r}; presets: {sorted(PRESETS)}')
  train_split, eval_split, steps, warmup, lr = PRESETS[dataset]
  if (model_name, dataset) == ('ViT-B_16', 'cifar10'):
    lr = 0.01  # The paper's choice for B/16 on CIFAR-10 (recipes.md).

  config = base_config.get_config()
  config.model_name = model_name
  config.dataset = dataset
  config.train_split = train_split
  config.eval_split = eval_split
  config.image_size = 384
  config.pp_train = 'inception_crop|flip_lr|value_range(-1, 1)'
  config.pp_eval = 'resize|value_range(-1, 1)'
  config.batch_size = 512
  config.eval_batch_size = 512
  config.accum_steps = 8
  config.total_steps = steps
  config.optimizer.name = 'sgd'
  config.optimizer.momentum = 0.9
  config.optimizer.accumulator_dtype = 'bfloat16'
  config.lr.base = lr
  config.lr.warmup_steps = warmup
  config.lr.decay_type = 'cosine'
  config.grad_clip_norm = 1.0
  config.eval_every = steps // 10
  config.checkpoint_every = steps // 10
  return config
