r"""Pre-training as in the ViT paper: Adam, weight decay on kernels, long warmup, a row per dataset.

The ViT paper's Table 3 rows for ViT-B (recipes.md), picked by DATASET; both with Adam β
0.9/0.999, batch 4096, 10k warmup steps, global-norm clip 1, 224 px, dropout 0.1:

  dataset       epochs  base lr  decay                weight decay
  imagenet2012  300     3e-3     cosine (to 0)        0.3
  imagenet21k   90      1e-3     linear (to 1e-5)     0.03

Weight decay in the AdamW form (scaled by the learning rate, on kernels only), representation
layer of the hidden size of the model's transformer (Dense + tanh; hybrids too), head bias -10.
On imagenet21k (multi-label) the loss is big_vision's `sigmoid_xent` with a zero head kernel, as
its `vit_i21k` config: with bias -10 every class starts near p = 0 and the initial loss is about
10 + K e^-10 (a softmax would cancel the bias). Other datasets have no row in the paper (JFT-300M
is not public) and are an error; larger models' rows (e.g. ViT-L's shorter ImageNet-21k runs)
are in the paper's table, not here: override the fields.

  python -m vit_jax.main --config=configs/pretrain.py:ViT-B_16,imagenet21k --workdir=/tmp/pt

Argument: MODEL,DATASET (imagenet2012, or imagenet21k prepared by hand in TFDS_DATA_DIR).
imagenet2012 trains on `train[:99%]` and evaluates `val` (`validation`) and `minival` (the 1% of
`train` left out), as big_vision's ImageNet configs; imagenet21k evaluates its `test` split.
Argument `bv` as a third part switches to big_vision's ViT-S/16 ImageNet-1k baseline
(`configs/vit_s16_i1k.py`, 76.5% for S/16), field by field: `train[:99%]` with minival
`train[99%:]`, batch 1024, 90 epochs, Adam lr 1e-3 (10k warmup, cosine), decoupled weight decay
1e-4, clip 1, softmax_xent, gap pooling, sincos2d position embedding, representation layer of the
hidden size, zero head, no dropout; Inception crop, flip, RandAugment(2, 10), mixup p = 0.2;
eval resize_small(256) by 'area' (big_vision's default method), central crop 224.
Three approximations: RandAugment(2, 10) runs timm's op set (`rand-m10-n2`, not the TF ops of
big_vision), and mixup pairs each image with the mirrored one (big_vision rolls the batch by
one); both draw from the same distributions of magnitudes and Beta(0.2, 0.2) ratios. Resized
pixels are rounded to uint8 where big_vision's cast truncates (0.5/255 brighter on average).
"""

import ml_collections

from vit_jax.training import base_config
from vit_jax.training import config_args

# The ViT paper's Table 3, ViT-B rows: dataset -> (epochs, base lr, decay, weight decay).
PAPER_ROWS = {
    'imagenet2012': (300., 3e-3, 'cosine', 0.3),
    'imagenet21k': (90., 1e-3, 'linear', 0.03),
}


def get_config(arg: str = 'ViT-B_16,imagenet21k'):
  args = config_args.parse_arg(arg, model=str, dataset=str, bv=False)
  model_name, dataset = args.model, args.dataset
  if dataset not in PAPER_ROWS and not args.bv:
    raise ValueError(f'configs/pretrain.py: DATASET {dataset!r} has no row of the ViT paper; '
                     f'expected one of {sorted(PAPER_ROWS)}')
  epochs, lr, decay, weight_decay = PAPER_ROWS.get(dataset, PAPER_ROWS['imagenet2012'])

  config = base_config.get_config()
  config.model_name = model_name
  config.dataset = dataset
  config.train_split = 'train[:99%]' if dataset == 'imagenet2012' else 'train'
  config.image_size = 224
  config.pp_train = 'inception_crop|flip_lr|value_range(-1, 1)'
  config.pp_eval = 'resize_small(256)|central_crop|value_range(-1, 1)'
  config.batch_size = 4096
  config.eval_batch_size = 1024
  config.num_epochs = epochs
  config.optimizer.name = 'adam'
  config.optimizer.weight_decay = weight_decay
  config.optimizer.decay_pattern = r'kernel$'
  config.lr.base = lr
  config.lr.warmup_steps = 10_000
  config.lr.decay_type = decay
  config.lr.end = 1e-5
  config.grad_clip_norm = 1.0
  from vit_jax import models  # pylint: disable=g-import-not-at-top
  if model_name not in models.MODEL_CONFIGS:
    raise ValueError(f'Unknown model {model_name!r}; known: {sorted(models.MODEL_CONFIGS)}')
  hidden_size = models.MODEL_CONFIGS[model_name].hidden_size  # Of the transformer, hybrids too.
  config.model = {'transformer': {'dropout_rate': 0.1}, 'head_bias_init': -10.,
                  'head_zero_init': False, 'representation_size': hidden_size}
  if dataset == 'imagenet21k':  # big_vision's vit_i21k: sigmoid loss, zero head, bias -10.
    config.loss = 'sigmoid_xent'
    config.model.head_zero_init = True
  config.log_every = 100
  config.checkpoint_every = 5000
  # ImageNet-1k: `val` and a `minival` of the 1% of train left out of training (big_vision's).
  config.evals = base_config.held_out_evaluators(
      dataset, 'validation' if dataset == 'imagenet2012' else 'test', every=5000)

  if args.bv:  # big_vision's configs/vit_s16_i1k.py (76.5% for S/16).
    config.dataset = 'imagenet2012'
    config.train_split = 'train[:99%]'
    config.evals = base_config.held_out_evaluators('imagenet2012', 'validation', every=5000)
    config.loss = 'softmax_xent'
    config.model = {'classifier': 'gap', 'posemb': 'sincos2d', 'head_zero_init': True,
                    'head_bias_init': 0., 'representation_size': hidden_size,
                    'transformer': {'dropout_rate': 0.0}}
    config.pp_train = 'inception_crop|flip_lr|randaug("rand-m10-n2")|value_range(-1, 1)'
    config.pp_eval = 'resize_small(256, method="area")|central_crop|value_range(-1, 1)'
    config.shuffle_buffer = 250_000
    config.mixup = ml_collections.ConfigDict({'mixup_alpha': 0.2, 'cutmix_alpha': 0., 'prob': 1.0})
    config.batch_size = 1024
    config.num_epochs = 90.
    config.optimizer.name = 'adam'
    config.optimizer.accumulator_dtype = 'bfloat16'  # big_vision's mu_dtype.
    config.optimizer.weight_decay = 1e-4
    config.optimizer.decoupled_weight_decay = True
    config.lr.base = 1e-3
    config.lr.warmup_steps = 10_000
    config.lr.decay_type = 'cosine'
    config.grad_clip_norm = 1.0
  return base_config.finish(config, args)
