r"""Fine-tuning a hybrid R+ViT checkpoint: the ViT fine-tuning recipe (configs/finetune.py).

The original library fine-tuned its hybrids exactly like the plain ViTs
(`base_config.vit_finetune_recipe`). The position embedding follows the ResNet's feature map:
R50+ViT-B/16 at 384 px has a 24x24 grid (577 rows), resized from 14x14 at 224.

  python -m vit_jax.main --config=configs/finetune_hybrid.py:R50+ViT-B_16,cifar10 \
      --workdir=/tmp/ft_hybrid --config.pretrained_path=imagenet21k_R50+ViT-B_16.npz

Arguments: MODEL (a hybrid zoo name: R50+ViT-B_16, R26+ViT-S_32, R26+ViT-B_32, R50+ViT-L_32,
R+ViT-Ti_16) and DATASET (a preset of `base_config.FINETUNE_PRESETS`). Expected, as published
for the original library with the ImageNet-21k R50+ViT-B/16 (recipes.md): 98.72% cifar10,
90.88% cifar100, 83.72% imagenet2012; not reproduced here.
"""

from vit_jax import models
from vit_jax.training import base_config
from vit_jax.training import config_args


def get_config(arg: str = 'R50+ViT-B_16,cifar10'):
  args = config_args.parse_arg(arg, model=str, dataset=str)
  config = models.MODEL_CONFIGS.get(args.model)
  if config is None or config.get('resnet') is None:
    hybrids = sorted(n for n, c in models.MODEL_CONFIGS.items() if c.get('resnet') is not None)
    raise ValueError(f'configs/finetune_hybrid.py fine-tunes hybrid models ({", ".join(hybrids)}), '
                     f'got {args.model!r}')
  config = base_config.vit_finetune_recipe(base_config.get_config(), args.model, args.dataset)
  return base_config.finish(config, args)
