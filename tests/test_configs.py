"""Every experiment config in configs/ loads, names a real model, and builds its train state;
the parser of their `FILE.py:ARGS` strings."""

import glob
import os

import jax
import jax.numpy as jnp
import pytest

from helpers import REPO, load_config, parse_as_main
from vit_jax import models
from vit_jax.training import config_args
from vit_jax.training import optim
from vit_jax.training import step

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
  with pytest.raises(FileNotFoundError, match="'configs/nope.py'"):
    config_args.load_config('configs/nope.py:quick')


def test_load_config_reads_file_and_args_as_the_config_flag_does():
  config = config_args.load_config(os.path.join(REPO, 'configs/cifar10_scratch.py:quick'))
  assert config.total_steps == 1000 and config.model_name == 'ViT-CIFAR_4'
  assert config_args.load_config(os.path.join(REPO, 'configs/cifar10_scratch.py')).num_epochs


# ---------------------------------------------------------------------------------------------
# The `FILE.py:ARGS` parser every config uses.


def test_positional_arguments_fill_non_flags_in_order_and_bare_flag_names_set_true():
  args = config_args.parse_arg('ViT-S_16,imagenet2012,bv', model=str, dataset=str, bv=False)
  assert (args.model, args.dataset, args.bv) == ('ViT-S_16', 'imagenet2012', True)
  args = config_args.parse_arg('', model='Swin-T', cifar10=False)
  assert (args.model, args.cifar10) == ('Swin-T', False)
  assert config_args.parse_arg('cifar10', model='Swin-T', cifar10=False).cifar10


def test_key_value_arguments_take_the_type_of_their_default():
  args = config_args.parse_arg('steps=5, lr=1e-2,quick=no,name=x', steps=1, lr=1., quick=True,
                               name='a')
  assert args.to_dict() == {'steps': 5, 'lr': 0.01, 'quick': False, 'name': 'x', 'evals': ()}
  assert isinstance(args.steps, int) and isinstance(args.lr, float)
  args = config_args.parse_arg('B,dataset=cifar100', model=str, dataset=str)
  assert (args.model, args.dataset) == ('B', 'cifar100')


@pytest.mark.parametrize('arg,match', [
    ('ViT-B_16,cifar10,size=3', r"Unknown config argument 'size' .* known: model, dataset"),
    ('ViT-B_16,cifar10,extra', r"Unexpected config argument 'extra'"),
    ('ViT-B_16', r"'dataset' missing .* takes 'MODEL,DATASET'"),
    ('model=a,b,model=c', r"'model' given twice"),
])
def test_bad_arguments_name_the_argument_and_the_known_ones(arg, match):
  with pytest.raises(ValueError, match=match):
    config_args.parse_arg(arg, model=str, dataset=str)


def test_values_that_do_not_convert_are_errors():
  with pytest.raises(ValueError, match=r"steps='ten' is not of type int"):
    config_args.parse_arg('steps=ten', steps=1)
  with pytest.raises(ValueError, match=r"quick='maybe' is not of type bool"):
    config_args.parse_arg('quick=maybe', quick=False)


def test_configs_reject_unknown_keys():
  with pytest.raises(ValueError, match=r"Unknown config argument 'lr'.*known: quick"):
    load_config('cifar10_scratch.py', 'quick,lr=3')


@pytest.mark.parametrize('name,arg', [(n, a) for n, args in ARGS.items() for a in args])
def test_every_model_field_is_a_command_line_override(name, arg):
  path = os.path.join(REPO, 'configs', name)
  config = parse_as_main(f'{path}:{arg}' if arg else path, '--config.model.dtype=bfloat16')
  assert config.model.dtype == 'bfloat16'
  model = step.create_model(config, 10)
  assert model.dtype == 'bfloat16'
  # The config holds the model's full field set: the zoo entry under the recipe's overrides.
  zoo = models.MODEL_CONFIGS[config.model_name].to_dict()
  for key, value in zoo.items():
    if key != 'model_name' and not isinstance(value, dict):
      assert key in config.model, key
  if 'transformer' in config.model:
    config = parse_as_main(f'{path}:{arg}' if arg else path,
                            '--config.model.transformer.remat=True',
                            '--config.model.transformer.gelu_approximate=False')
    model = step.create_model(config, 10)
    assert model.transformer['remat'] is True
    assert model.transformer['gelu_approximate'] is False


def test_an_unknown_model_field_names_the_known_ones():
  from vit_jax.training import base_config  # pylint: disable=g-import-not-at-top
  config = base_config.get_config()
  config.model = {'transformer': {'dropout': 0.1}}
  with pytest.raises(ValueError, match=r'config\.model\.transformer\.dropout; known: .*'
                                       r'dropout_rate'):
    base_config.with_model_fields(config)
  with pytest.raises(Exception, match='nope'):
    parse_as_main(os.path.join(REPO, 'configs', 'cifar10_scratch.py'),
                   '--config.model.nope=1')
