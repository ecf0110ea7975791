r"""Pre-training as in the ViT paper: Adam, weight decay on kernels, long warmup, linear decay.

Adam β 0.9/0.999, batch 4096, lr 1e-3 with 10k warmup steps then linear decay to 1e-5, weight
decay 0.03 (AdamW form: scaled by the learning rate, on kernels only), clip 1, dropout 0.1,
representation layer of the hidden size (Dense + tanh), head bias -10, 90 epochs at 224.

  python -m vit_jax.main --config=configs/pretrain.py:ViT-B_16,imagenet21k --workdir=/tmp/pt

Argument: MODEL,DATASET (a TFDS name; imagenet21k must be prepared by hand in TFDS_DATA_DIR).
Argument `bv` as a third part switches to big_vision's modern ImageNet-1k baseline: ViT-S/16-style
gap pooling, sincos2d position embedding, decoupled weight decay 1e-4, batch 1024.
"""

from vit_jax import base_config


def get_config(arg: str = 'ViT-B_16,imagenet21k'):
  parts = arg.split(',')
  if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != 'bv'):
    raise ValueError(f"configs/pretrain.py takes 'MODEL,DATASET[,bv]', got {arg!r}")
  model_name, dataset = parts[:2]

  config = base_config.get_config()
  config.model_name = model_name
  config.dataset = dataset
  config.train_split = 'train'
  config.eval_split = 'validation' if dataset == 'imagenet2012' else 'test'
  config.image_size = 224
  config.pp_train = 'inception_crop|flip_lr|value_range(-1, 1)'
  config.pp_eval = 'resize_small(256)|central_crop|value_range(-1, 1)'
  config.batch_size = 4096
  config.eval_batch_size = 1024
  config.num_epochs = 90.
  config.optimizer.name = 'adam'
  config.optimizer.weight_decay = 0.03
  config.optimizer.decay_pattern = r'kernel$'
  config.lr.base = 1e-3
  config.lr.warmup_steps = 10_000
  config.lr.decay_type = 'linear'
  config.lr.end = 1e-5
  config.grad_clip_norm = 1.0
  config.model = {'transformer': {'dropout_rate': 0.1}, 'head_bias_init': -10.,
                  'head_zero_init': False, 'representation_size': 768}
  if model_name.startswith('ViT-'):
    from vit_jax import models  # pylint: disable=g-import-not-at-top
    config.model.representation_size = models.MODEL_CONFIGS[model_name].hidden_size
  config.log_every = 100
  config.eval_every = 5000
  config.checkpoint_every = 5000

  if len(parts) == 3:  # big_vision's plain ViT baseline on ImageNet-1k (76.5% for S/16).
    config.model = {'classifier': 'gap', 'posemb': 'sincos2d', 'head_zero_init': True}
    config.batch_size = 1024
    config.optimizer.weight_decay = 1e-4
    config.optimizer.decoupled_weight_decay = True
    config.lr.warmup_steps = 10_000
    config.lr.decay_type = 'cosine'
  return config
