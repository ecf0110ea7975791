r"""DeiT (Touvron et al. 2021): data-efficient ViT training, with a distillation token.

ImageNet-1k recipe (recipes.md): AdamW lr 5e-4 × batch/512, wd 0.05, 300 epochs with 5 of
warmup, cosine, label smoothing 0.1, RandAugment m9 mstd 0.5, mixup 0.8 / cutmix 1.0, random
erasing 0.25, repeated augmentation (3), stochastic depth 0.1, no dropout; hard distillation from
a CNN teacher through the `dist` token (DeiT-B: 83.4% distilled vs 81.8% without, not run here).
Crops are timm's RandomResizedCrop sampler with a bicubic resize and the eval resize is PIL's
bicubic (`base_config.timm_imagenet_recipe`), as DeiT's `--train-interpolation bicubic`.

Differences from DeiT's main.py (facebookresearch/deit), kept on purpose:
- schedule ends: DeiT warms up from `--warmup-lr 1e-6`, decays to `--min-lr 1e-5` and steps
  the schedule once per epoch (`lr_scheduler.step(epoch)`); ours warms up from 0, decays to 0
  and steps per step (the shared schedule of optim.py). Computed for batch 1024 (peak 1e-3),
  after the 5 warmup epochs the two stay within 1.3% of the peak; during warmup DeiT holds
  1e-6 for the whole first epoch, then 2e-4, 4e-4, ... per epoch where ours ramps per step;
- initialisation: DeiT inits its Linear layers, position embedding and dist token with
  truncated normal sigma 0.02 (timm `_init_weights`, `trunc_normal_(self.pos_embed, std=.02)`),
  the patch convolution with PyTorch's default; ours is the original ViT's (Xavier-uniform
  kernels, e.g. std 0.036 for B's 768x768 q/k/v against 0.018; normal 0.02 position
  embedding; LeCun-normal patch embedding and heads);
- DeiT keeps a weight EMA (`--model-ema`, decay 0.99996) that it does not report; add
  `--config.ema_decay=0.99996` for it (the evaluators then also report it, `val/ema_accuracy`);
- the eval resize rounds the longer side (torchvision truncates it: at most 1 px apart);
- it trains on `train[:99%]` and evaluates `val` and a `minival` of the other 1%, as
  big_vision's ImageNet configs (the official script trains on all of `train`).

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

from vit_jax.training import base_config
from vit_jax.training import config_args


def get_config(arg: str = 'ViT-B_16'):
  """`arg`: a ViT zoo name (ImageNet-1k), or `cifar10` (the demonstration)."""
  args = config_args.parse_arg(arg, model='ViT-B_16', cifar10=False)
  config = base_config.get_config()
  config.distillation = base_config.distillation(teacher_model='BiT-M-R50x1', kind='hard')
  if args.cifar10:
    base_config.cifar10_baseline(config, quick=True)
    config.model_name = 'ViT-CIFAR_4'
    config.model = {'distilled': True}
    config.distillation.teacher_model = 'CNN-CIFAR'
    return base_config.finish(config, args)
  if not args.model.startswith('ViT-'):
    raise ValueError(f"Unknown argument {args.model!r}; expected a ViT zoo name or 'cifar10'")

  config.model_name = args.model
  config.model = {'distilled': True, 'head_zero_init': False,
                  'transformer': {'dropout_rate': 0.0, 'stochastic_depth': 0.1}}
  base_config.timm_imagenet_recipe(config, warmup_epochs=5)
  config.repeated_augmentation = 3
  config.grad_clip_norm = 0.0
  return base_config.finish(config, args)
