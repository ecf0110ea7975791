"""Every experiment config in configs/ loads, names a real model, and builds its train state."""

import glob
import os

import jax
import jax.numpy as jnp
import pytest

from helpers import REPO, load_config
from vit_jax import models
from vit_jax import optim
from vit_jax import step

# config file -> arguments to try (every config must appear here).
ARGS = {
    'cifar10_scratch.py': ['', 'quick'],
    'finetune.py': ['ViT-B_16,cifar10', 'ViT-L_16,imagenet2012', 'ViT-B_32,oxford_iiit_pet'],
    'pretrain.py': ['ViT-B_16,imagenet21k', 'ViT-S_16,imagenet2012,bv'],
    'deit.py': ['ViT-B_16', 'cifar10'],
    'swin.py': ['Swin-T', 'Swin-S', 'Swin-B', 'cifar10'],
    'cifar10_cnn.py': ['', 'quick'],
    'bit_hyperrule.py': ['BiT-M-R50x1,cifar10', 'BiT-M-R50x1,oxford_iiit_pet'],
    'finetune_hybrid.py': ['R50+ViT-B_16,cifar10'],
}


def test_every_config_file_is_covered():
  files = {os.path.basename(p) for p in glob.glob(os.path.join(REPO, 'configs', '*.py'))}
  assert files <= set(ARGS), f'add {sorted(files - set(ARGS))} to ARGS'


@pytest.mark.parametrize('name,arg', [(n, a) for n, args in ARGS.items() for a in args])
def test_config_builds_model_and_optimizer(name, arg):
  path = os.path.join(REPO, 'configs', name)
  if not os.path.exists(path):
    pytest.skip(f'{name} not in this checkout')
  config = load_config(name, arg)
  assert config.model_name in models.MODEL_CONFIGS
  model = step.create_model(config, 10)
  size = config.image_size
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                             jnp.zeros((1, size, size, 3))))['params']
  tx, schedule = optim.make_optimizer(config, params)
  jax.eval_shape(tx.init, params)
  assert float(schedule(config.total_steps - 1)) >= 0.


def test_bad_config_arguments_are_rejected():
  with pytest.raises(ValueError, match='Unknown fine-tuning dataset'):
    load_config('finetune.py', 'ViT-B_16,mnist')
  with pytest.raises(ValueError, match="takes 'MODEL,DATASET'"):
    load_config('finetune.py', 'ViT-B_16')
