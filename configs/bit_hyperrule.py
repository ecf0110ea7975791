r"""Fine-tuning a BiT ResNet with BiT-HyperRule (Kolesnikov et al. 2020; recipes.md).

SGD momentum 0.9, lr 0.003, batch 512, no weight decay, zero-initialised head. Steps by the size
of the training set: < 20k examples 500 steps (x0.1 at 200/300/400, warmup 100); < 500k 10k steps
(x0.1 at 3k/6k/9k, warmup 500); else 20k steps (x0.1 at 6k/12k/18k, warmup 500). Resolution:
images smaller than 96x96 are resized to 160 and randomly cropped to 128, larger ones resized to
512 and cropped to 480; evaluation resizes to the crop size. Mixup alpha 0.1 (one Beta draw per
batch, mixed with the reversed batch) from 20k examples up. Random horizontal flips (the public
TF pipeline flipped every image by mistake; we flip at random).

  python -m vit_jax.main --config=configs/bit_hyperrule.py:BiT-M-R50x1,cifar10 --workdir=/tmp/bit \
      --config.pretrained_path=BiT-M-R50x1.npz

Arguments: MODEL (a BiT zoo name, e.g. BiT-M-R50x1, BiT-M-R101x3) and DATASET (a preset below).
Pixels go to [-1, 1], as in the rest of the library (recipes.md does not fix BiT's input range).
No gradient clipping: BiT-HyperRule has none. Not run here (no accelerator, no BiT download).
"""

import ml_collections

from vit_jax.training import base_config
from vit_jax.training import config_args

# dataset: (train split, eval split, training examples, image side smaller than 96 px).
PRESETS = {
    'cifar10': ('train[:98%]', 'test', 49_000, True),
    'cifar100': ('train[:98%]', 'test', 49_000, True),
    'oxford_iiit_pet': ('train[:90%]', 'test', 3_312, False),
    'oxford_flowers102': ('train', 'test', 1_020, False),
    'imagenet2012': ('train[:99%]', 'validation', 1_268_355, False),
}


def hyperrule(num_examples: int, small_images: bool) -> dict:
  """BiT-HyperRule's schedule, resolution and mixup for a dataset of `num_examples` images."""
  if num_examples < 20_000:
    steps, boundaries, warmup = 500, (200, 300, 400), 100
  elif num_examples < 500_000:
    steps, boundaries, warmup = 10_000, (3_000, 6_000, 9_000), 500
  else:
    steps, boundaries, warmup = 20_000, (6_000, 12_000, 18_000), 500
  resize, crop = (160, 128) if small_images else (512, 480)
  return dict(steps=steps, boundaries=boundaries, warmup=warmup, resize=resize, crop=crop,
              mixup_alpha=0.1 if num_examples >= 20_000 else 0.0)


def get_config(arg: str = 'BiT-M-R50x1,cifar10'):
  args = config_args.parse_arg(arg, model=str, dataset=str)
  model_name, dataset = args.model, args.dataset
  if not model_name.startswith('BiT-'):
    raise ValueError(f'BiT-HyperRule fine-tunes BiT models (BiT-M-R50x1, ...), got {model_name!r}')
  if dataset not in PRESETS:
    raise ValueError(f'Unknown BiT-HyperRule dataset {dataset!r}; presets: {sorted(PRESETS)}')
  train_split, eval_split, num_examples, small_images = PRESETS[dataset]
  rule = hyperrule(num_examples, small_images)

  config = base_config.get_config()
  config.model_name = model_name
  config.dataset = dataset
  config.train_split = train_split
  config.image_size = rule['crop']
  config.pp_train = f'resize({rule["resize"]})|random_crop(pad=0)|flip_lr|value_range(-1, 1)'
  config.pp_eval = 'resize|value_range(-1, 1)'
  if rule['mixup_alpha']:
    config.mixup = ml_collections.ConfigDict(dict(mixup_alpha=rule['mixup_alpha'],
                                                  cutmix_alpha=0.0))
  config.batch_size = 512
  config.eval_batch_size = 512
  config.accum_steps = 8  # 64 images per micro-batch, as the ViT fine-tuning config.
  config.total_steps = rule['steps']
  config.optimizer.name = 'sgd'
  config.optimizer.momentum = 0.9
  config.lr.base = 0.003
  config.lr.warmup_steps = rule['warmup']
  config.lr.decay_type = 'piecewise'
  config.lr.boundaries = rule['boundaries']
  config.lr.scales = (0.1,) * len(rule['boundaries'])
  config.grad_clip_norm = 0.0
  config.checkpoint_every = rule['steps'] // 10
  config.evals = base_config.held_out_evaluators(dataset, eval_split, every=rule['steps'] // 10)
  return base_config.finish(config, args)
