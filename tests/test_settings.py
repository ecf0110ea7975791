"""The job's settings: the config prepared once (`training.settings.prepare`), `config.evals`,
the fields that were removed, and how far the config travels before the first step."""

import ast
import functools
import os
import pathlib
import subprocess
import sys

import ml_collections
import pytest

from helpers import REPO, load_config, parse_as_main
import test_layout
import tiny_config
from vit_jax.training import base_config
from vit_jax.training import config_args
from vit_jax.training import evaluators
from vit_jax.training import settings as settings_lib
from vit_jax.training import sharding
from vit_jax.training import train


def prepare(config, num_classes=10, train_examples=None):
  return settings_lib.prepare(config, settings_lib.DataFacts(num_classes, train_examples),
                              sharding.make_mesh(config.mesh))


TINY = os.path.join(REPO, 'tests', 'tiny_config.py')


# ---------------------------------------------------------------------------------------------
# prepare.


def test_prepare_works_out_the_job_and_leaves_the_config_alone():
  config = tiny_config.get_config()
  config.update(num_epochs=2., batch_size=32, ema_decay=0.5)
  config.model = {'hidden_size': 32}  # Overrides only: the settings hold every model field.
  before = config.to_dict()
  settings = prepare(config, num_classes=10, train_examples=1000)
  assert config.to_dict() == before  # Pure.
  assert settings.total_steps == 63  # ceil(2 epochs x 1000 / 32).
  assert settings.image_size == (32, 32) and settings.num_classes == 10
  assert settings.model.to_dict() == base_config.model_fields('ViT-CIFAR_4',
                                                              {'hidden_size': 32}).to_dict()
  test = settings.evals.test
  assert (test.dataset, test.pp, test.batch_size, test.ema) == (
      'cifar10', config.pp_eval, config.eval_batch_size, True)  # The job's, and its EMA.
  # Without data (compiling ahead of time) the steps stay the config's.
  assert prepare(config).total_steps == config.total_steps
  with pytest.raises(ValueError, match='config.num_classes=5 but cifar10 has 10 classes'):
    prepare(tiny_config.for_data(dict(dataset='cifar10'), num_classes=5))


def test_settings_are_frozen():
  settings = prepare(tiny_config.get_config())
  assert isinstance(settings, ml_collections.FrozenConfigDict)
  for assign in (lambda: setattr(settings, 'total_steps', 1),
                 lambda: setattr(settings.lr, 'base', 1.),
                 lambda: setattr(settings.evals.test, 'every', 1)):
    with pytest.raises(AttributeError, match='immutable'):
      assign()


def test_an_evaluator_of_its_own_data_keeps_it():
  config = tiny_config.get_config()
  config.evals.other = base_config.evaluator('classification', dataset='imagefolder',
                                             data_dir='/images', pp='resize', batch_size=8,
                                             split='val')
  other = prepare(config).evals.other
  assert (other.dataset, other.data_dir, other.pp, other.batch_size, other.split, other.ema) == (
      'imagefolder', '/images', 'resize', 8, 'val', False)


@pytest.mark.parametrize('change,match', [
    (lambda c: c.evals.update({'x': {'type': 'nope'}}),
     r"config.evals.x: Unknown evaluator type 'nope'; types: classification, fewshot"),
    (lambda c: c.evals.update({'x': {'split': 'test'}}), r'config.evals.x has no type; types'),
    (lambda c: c.evals.update({'x': {'type': 'fewshot', 'split': 'a'}}),
     r"config.evals.x: .* 'fewshot' has no field 'split'; its fields: type, every, "),
    (lambda c: c.evals.test.update(ema=True),
     r'config.evals.test.ema is True but .*config.ema_decay'),
    (lambda c: c.evals.test.update(batch_size=0), r'config.evals.test.batch_size=0 is not'),
    (lambda c: c.update(nonsense=1), r'Unknown config field config.nonsense'),
    (lambda c: c.update(checkpoint_every=-1), r'config.checkpoint_every=-1 must be 0 \(no '),
    (lambda c: c.update(log_every=0), r'config.log_every=0 must be at least 1'),
    (lambda c: c.optimizer.update(nonsense=1), r'Unknown config field config.optimizer.nonsense'),
])
def test_bad_settings_are_named(change, match):
  config = tiny_config.get_config()
  change(config)
  with pytest.raises(ValueError, match=match):
    prepare(config)


def test_an_unknown_evaluator_type_lists_the_types():
  with pytest.raises(ValueError, match="Unknown evaluator type 'knn'; types: classification, "
                                       'fewshot'):
    base_config.evaluator('knn')
  # Every declared type has its evaluator, and no evaluator is undeclared.
  assert tuple(evaluators.TYPES) == base_config.EVALUATOR_TYPES


# ---------------------------------------------------------------------------------------------
# config.evals in the configs and on the command line.


def test_every_recipe_declares_its_evaluators():
  for name, arg, expected in [
      ('cifar10_scratch.py', 'quick', {'test': 'test'}),
      ('finetune.py', 'ViT-B_16,cifar10', {'test': 'test'}),
      ('bit_hyperrule.py', 'BiT-M-R50x1,oxford_flowers102', {'test': 'test'}),
      ('pretrain.py', 'ViT-B_16,imagenet21k', {'test': 'test'}),
      # ImageNet-1k: `val` and a `minival` of the 1% of train left out of training (big_vision).
      ('finetune.py', 'ViT-B_16,imagenet2012', {'val': 'validation', 'minival': 'train[99%:]'}),
      ('pretrain.py', 'ViT-B_16,imagenet2012', {'val': 'validation', 'minival': 'train[99%:]'}),
      ('deit.py', 'ViT-B_16', {'val': 'validation', 'minival': 'train[99%:]'}),
      ('swin.py', 'Swin-T', {'val': 'validation', 'minival': 'train[99%:]'}),
  ]:
    config = load_config(name, arg)
    assert {k: v.split for k, v in config.evals.items()} == expected, (name, arg)
    if 'minival' in expected:
      assert config.train_split == 'train[:99%]', (name, arg)
    for entry in config.evals.values():  # Every field declared: each a command-line override.
      assert set(entry) == {'type', *base_config.evaluator_fields(entry.type)}


def test_an_evaluator_added_on_the_command_line():
  config = parse_as_main(os.path.join(REPO, 'configs', 'cifar10_scratch.py:quick,evals=minival'),
                         '--config.evals.minival.split=train[:500]',
                         '--config.evals.minival.every=100')
  assert (config.evals.minival.type, config.evals.minival.split) == ('classification',
                                                                     'train[:500]')
  assert config.evals.test.split == 'test' and config.evals.test.every == 1000  # The recipe's.
  config = parse_as_main(f'{TINY}:cifar10,evals=probe:fewshot+minival',
                         '--config.evals.probe.shots=(1,5)')
  assert config.evals.probe.shots == (1, 5) and config.evals.minival.type == 'classification'
  # A whole `config.evals` given as a dict: its entries are completed when prepared.
  config = parse_as_main(TINY, "--config.evals={'val': {'type': 'classification', 'every': 5}}")
  assert prepare(config).evals.val.split == 'test'


@pytest.mark.parametrize('evals,match', [
    ('test', 'already declares config.evals.test'),
    ('x:knn', "Unknown evaluator type 'knn'"),
    ('a b', r'expected NAME\[:TYPE\]'),
])
def test_bad_evals_arguments_are_named(evals, match):
  with pytest.raises(ValueError, match=match):
    load_config('cifar10_scratch.py', f'quick,evals={evals}')


@pytest.mark.parametrize('field,value,replacement', [
    ('eval_every', 200, r'config\.evals\.test\.every'),
    ('eval_split', 'test[:10]', r'config\.evals\.test\.split'),
    ('fewshot_every', 200, r"config\.evals\.NAME = base_config\.evaluator\('fewshot'"),
])
def test_a_removed_field_names_its_replacement(field, value, replacement):
  config = tiny_config.get_config()
  config[field] = value  # As an older config file sets it.
  with pytest.raises(ValueError, match=f'config.{field} was removed: set {replacement}'):
    prepare(config)
  argv = ['main', f'--config={TINY}', f'--config.{field}={value}']
  with pytest.raises(ValueError, match=f'--config.{field} was removed: set {replacement}'):
    config_args.check_removed_overrides(argv)
  config_args.check_removed_overrides(['main', f'--config={TINY}', '--config.seed=1'])


@pytest.mark.slow
def test_a_removed_field_on_the_command_line_of_main(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'vit_jax.main', f'--config={TINY}', f'--workdir={tmp_path}',
       '--config.eval_every=200'], env={**os.environ, 'PYTHONPATH': REPO},
      capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert '--config.eval_every was removed: set config.evals.test.every' in result.stderr


# ---------------------------------------------------------------------------------------------
# Defaults live in base_config only.


def _declared_fields():
  fields = set()

  def visit(tree):
    for key, value in tree.items():
      fields.add(key)
      if isinstance(value, dict):
        visit(value)
  visit(base_config.get_config().to_dict())
  for kind in base_config.EVALUATOR_TYPES:
    fields |= set(base_config.evaluator_fields(kind))
  return fields | set(base_config.distillation())


def _restates(node: ast.AST, fields: set[str]) -> bool:
  """`X.get('FIELD', default)` of a declared field, or `hasattr(X.FIELD, 'to_dict')` (a field
  that tests once gave as a dict)."""
  if not isinstance(node, ast.Call):
    return False
  if isinstance(node.func, ast.Attribute) and node.func.attr == 'get':
    key = node.args[0] if node.args else None
    return (isinstance(key, ast.Constant) and key.value in fields
            and len(node.args) + len(node.keywords) >= 2)
  return (isinstance(node.func, ast.Name) and node.func.id == 'hasattr' and len(node.args) == 2
          and isinstance(node.args[0], ast.Attribute) and node.args[0].attr in fields
          and isinstance(node.args[1], ast.Constant) and node.args[1].value == 'to_dict')


def restated_defaults(root: pathlib.Path) -> list[str]:
  """Where the package restates a base_config default (`_restates`), as 'file:line: code'."""
  fields, found = _declared_fields(), []
  for path in sorted(root.rglob('*.py')):
    found += [f'{path.relative_to(root)}:{node.lineno}: {ast.unparse(node)}'
              for node in ast.walk(ast.parse(path.read_text())) if _restates(node, fields)]
  return found


def test_no_code_restates_a_base_config_default():
  assert not restated_defaults(test_layout.ROOT)


# ---------------------------------------------------------------------------------------------
# How far the config travels before the first step.


@functools.cache
def _module_floor(module):
  """1 + the highest floor the module imports (the package's modules only)."""
  imports = test_layout.scan()[module].edges - {test_layout.PACKAGE}
  return 1 + max((_module_floor(m) for m in imports), default=0)


def config_path_to_first_step(config, workdir):
  """The package modules `train_and_evaluate` hands the job's config (or its settings) to before
  the first train step, in order (consecutive calls in one module counted once)."""
  path = []

  class FirstStep(Exception):
    pass

  def is_config(value):
    return (isinstance(value, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict))
            and 'model_name' in value)

  def profile(frame, event, _):
    module = frame.f_globals.get('__name__', '')
    if event != 'call' or not module.startswith('vit_jax.'):
      return
    if module == 'vit_jax.training.train' and frame.f_code.co_name == 'train_step':
      raise FirstStep()
    code = frame.f_code
    names = code.co_varnames[:code.co_argcount + code.co_kwonlyargcount]
    if any(is_config(frame.f_locals.get(n)) for n in names) and path[-1:] != [module]:
      path.append(module)

  sys.setprofile(profile)
  try:
    train.train_and_evaluate(config, workdir)
  except FirstStep:
    pass
  finally:
    sys.setprofile(None)
  return path


def test_the_config_goes_back_up_a_floor_at_most_4_times(tmp_path, data_overrides):
  config = tiny_config.for_data(data_overrides, ema_decay=0.9)
  config.evals.probe = base_config.evaluator('fewshot', shots=(1,), num_seeds=1,
                                             train_split='train[:50]', test_split='test[:20]')
  path = config_path_to_first_step(config, str(tmp_path))
  assert path[:2] == ['vit_jax.training.train', 'vit_jax.training.settings']
  ups = [(a, b) for a, b in zip(path, path[1:]) if _module_floor(b) > _module_floor(a)]
  # Before: 7 (the config normalised and checked twice, data and few-shot handed the config).
  assert len(ups) <= 4, (ups, path)
  # Below training, only the training stream reads the job's settings; nothing above it.
  assert [m for m in path if not m.startswith('vit_jax.training.')] == [
      'vit_jax.data.input_pipeline']
