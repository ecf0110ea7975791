r"""Fine-tuning a pre-trained checkpoint as in the ViT paper (the original library's recipe).

SGD momentum 0.9, no weight decay, global-norm clip 1, batch 512 (8 micro-batches of 64),
warmup then cosine, 384 px, Inception crop + flip, pixels in [-1, 1], zero-initialised head
(`base_config.vit_finetune_recipe`). Dropout is the zoo entry's, as in the original: 0.1 for
ViT-L/16, ViT-H/14, R50+ViT-B/16 and R50+ViT-L/32, 0 for the others.

  python -m vit_jax.main --config=configs/finetune.py:ViT-B_16,cifar10 --workdir=/tmp/ft \
      --config.pretrained_path=imagenet21k_ViT-B_16.npz

Arguments: MODEL (any zoo name, e.g. ViT-B_16, ViT-L_16, R50+ViT-B_16) and DATASET (a preset of
`base_config.FINETUNE_PRESETS`: cifar10, cifar100, imagenet2012, oxford_iiit_pet,
oxford_flowers102). Expected, as published for the original library with ImageNet-21k
checkpoints (recipes.md): ViT-B/16 99.02% cifar10, 92.06% cifar100, 84.53% imagenet2012; not
reproduced here (README "Fine-tune a real checkpoint" runs ViT-Ti/16 at 128 px).
"""

from vit_jax.training import base_config
from vit_jax.training import config_args


def get_config(arg: str = 'ViT-B_16,cifar10'):
  args = config_args.parse_arg(arg, model=str, dataset=str)
  config = base_config.vit_finetune_recipe(base_config.get_config(), args.model, args.dataset)
  return base_config.finish(config, args)
