"""The one loader (`models.loader`): every tool, the teacher and fine-tuning read model files
through it, in any format `convert` reads, with the model card and state beside them.

The acceptance flow trains the CIFAR-10 CNN and the small ViT as a user does, then runs
`classify`, `visualize attention` and `fewshot` on the exported `model.npz` and on the same
weights converted to timm `.safetensors` (the ViT; timm has no counterpart of our CNN).
"""

import os
import re

import jax
import numpy as np
from PIL import Image
import pytest

from helpers import REPO, classify_cli, make_image_folder, random_params, run_python
from helpers import write_eval_pngs
import tiny_config
from vit_jax import checkpoint
from vit_jax import models
from vit_jax.data import input_pipeline
from vit_jax.models import card as card_lib
from vit_jax.models import loader
from vit_jax.tools import convert
from vit_jax.training import base_config
from vit_jax.training import distill
from vit_jax.training import fewshot
from vit_jax.training import step as step_lib


def _tiny_vit_export(path, num_classes=10):
  """A tiny ViT written as a training export: `.npz`, its card, no state."""
  config = tiny_config.get_config()
  model = models.get_model(config.model_name, num_classes=num_classes, **config.model)
  params = random_params(model, np.zeros((1, 32, 32, 3), np.float32))
  card = card_lib.make_card(model_name=config.model_name, model_overrides=config.model,
                            num_classes=num_classes, class_names=None, image_size=32,
                            pp_eval=config.pp_eval, normalization='cifar10')
  card_lib.write_model(path, params, None, card)
  return model, params


def test_a_converted_export_loads_with_its_card_and_the_same_variables(tmp_path):
  _, params = _tiny_vit_export(tmp_path / 'model.npz')
  convert.convert(str(tmp_path / 'model.npz'), str(tmp_path / 'timm.safetensors'))
  assert (tmp_path / 'timm.json').exists()  # The card goes with the weights.
  from_npz = loader.load(tmp_path / 'model.npz')
  from_timm = loader.load(tmp_path / 'timm.safetensors')
  for loaded in (from_npz, from_timm):
    assert loaded.normalization == 'cifar10' and loaded.image_size == (32, 32)
    assert loaded.pp_eval == 'normalize("cifar10")'
    # The card's model (tanh GELU, as trained), not the exact GELU timm files imply.
    assert loaded.model.transformer.get('gelu_approximate', True) is True
  jax.tree.map(np.testing.assert_array_equal, from_npz.params, from_timm.params)
  jax.tree.map(np.testing.assert_array_equal, from_npz.params, params)
  x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
  np.testing.assert_array_equal(from_npz.model.apply(from_npz.variables, x),
                                from_timm.model.apply(from_timm.variables, x))


def test_a_timm_file_without_card_runs_with_the_exact_gelu(tmp_path):
  model, params = _tiny_vit_export(tmp_path / 'model.npz')
  os.remove(tmp_path / 'model.json')
  convert.convert(str(tmp_path / 'model.npz'), str(tmp_path / 'bare.safetensors'))
  loaded = loader.load(tmp_path / 'bare.safetensors', num_heads=2)
  assert loaded.model.transformer['gelu_approximate'] is False  # timm's ViTs: exact GELU
  assert loaded.normalization == 'minus_one_one'  # the family's default, without a card


def test_one_exception_type_for_a_missing_state(tmp_path):
  model = models.get_model('ResNet-18', num_classes=10, num_layers=(1,), width=8)
  shapes = models.init_shapes(model, (32, 32))
  params = random_params(model, np.zeros((1, 32, 32, 3), np.float32))
  checkpoint.save(params, tmp_path / 'resnet.npz')
  with pytest.raises(checkpoint.CheckpointError, match='batch_stats'):
    loader.load(tmp_path / 'resnet.npz', 'ResNet-18', num_layers=(1,), width=8)
  teacher = base_config.distillation(
      teacher_model='ResNet-18', teacher_path=str(tmp_path / 'resnet.npz'),
      teacher_overrides={'num_layers': (1,), 'width': 8})
  with pytest.raises(checkpoint.CheckpointError, match='batch_stats'):
    distill.load_teacher(teacher, 32, 10)
  # With the state sidecar beside it, the same file is a teacher.
  checkpoint.save({'batch_stats': jax.tree.map(lambda s: np.ones(s.shape, s.dtype),
                                                shapes['batch_stats'])},
                  card_lib.state_path_for(tmp_path / 'resnet.npz'))
  _, variables = distill.load_teacher(teacher, 32, 10)
  assert set(variables) == {'params', 'batch_stats'}
  with pytest.raises(FileNotFoundError):
    loader.load(tmp_path / 'nothing.npz')


def test_load_pretrained_fits_the_file_and_checks_its_state_as_load_model_does(tmp_path):
  resnet = dict(num_layers=(1,), width=8)
  source = models.get_model('ResNet-18', num_classes=10, **resnet)
  shapes = models.init_shapes(source, (32, 32))
  params = random_params(source, np.zeros((1, 32, 32, 3), np.float32))
  path = tmp_path / 'resnet.npz'
  checkpoint.save(params, path)
  target = models.get_model('ResNet-18', num_classes=3, **resnet)

  def load():
    return loader.load_pretrained(path, target, (32, 32), model_name='ResNet-18', seed=4)

  # No state beside the file: the parameters fitted (the fresh head the model's initialiser gives
  # with the seed), no state (the model's initial one is used).
  fitted, state = load()
  assert state is None
  fresh = target.init(jax.random.PRNGKey(4), np.zeros((1, 32, 32, 3), np.float32),
                      train=False)['params']
  flat, flat_source = checkpoint.flatten(fitted), checkpoint.flatten(params)
  for key, value in checkpoint.flatten(fresh).items():
    expected = value if key.startswith('head/') else flat_source[key]
    np.testing.assert_array_equal(flat[key], expected, err_msg=key)
  # The exported statistics beside it are the state.
  stats = jax.tree.map(lambda s: np.full(s.shape, 0.25, s.dtype), shapes['batch_stats'])
  checkpoint.save({'batch_stats': stats}, card_lib.state_path_for(path))
  _, state = load()
  jax.tree.map(np.testing.assert_array_equal, state['batch_stats'], stats)
  # A state without the model's collection: one check, one error, as the loader's.
  other = {'other': {'x': np.zeros(2, np.float32)}}
  checkpoint.save(other, card_lib.state_path_for(path))
  with pytest.raises(checkpoint.CheckpointError, match=r"\['batch_stats'\]") as fitting:
    load()
  with pytest.raises(checkpoint.CheckpointError) as loading:
    loader.load_model(params, 'ResNet-18', model_state=other, **resnet)
  assert str(fitting.value) == str(loading.value)


def test_the_few_shot_probe_compiles_once_per_job(tmp_path):
  root = make_image_folder(str(tmp_path / 'images'), splits=(('train', 12), ('test', 6)))
  config = tiny_config.get_config()
  model = step_lib.create_model(config, 3)
  params = random_params(model, np.zeros((1, 32, 32, 3), np.float32))
  train, test = (input_pipeline.eval_dataset(
      input_pipeline.get_source('imagefolder', split, data_dir=root), 8, pp=config.pp_eval,
      image_size=32, skip_corrupt_images=True)[0] for split in ('train', 'test'))
  probe = fewshot.Probe(model, train, test, shots=(1, 2), l2_reg=1., seed=0, num_seeds=1)
  compiles = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda name, *_, **__: compiles.append(name)
      if name == '/jax/core/compile/backend_compile_duration' else None)
  first = probe({'params': params})
  compiled_once = len(compiles)
  moved = jax.tree.map(lambda p: p + 0.5, params)
  second = probe({'params': moved})
  assert compiled_once >= 1 and len(compiles) == compiled_once, 'recompiled for new parameters'
  assert set(first) == set(second) == {'1shot', '2shot'}


# ---------------------------------------------------------------------------------------------
# Acceptance: train as a user does, then every tool on the export and its timm conversion.


@pytest.fixture(scope='module')
def exports(tmp_path_factory, data_overrides):
  """{config: (workdir, the job's final eval accuracy)} of two short quick-config runs."""
  root = tmp_path_factory.mktemp('exports')
  runs = {}
  for name in ('cifar10_cnn.py:quick', 'cifar10_scratch.py:quick'):
    workdir = root / name.split('.')[0]
    out = run_python(
        '-m', 'vit_jax.main', f'--config={REPO}/configs/{name}', f'--workdir={workdir}',
        f'--config.dataset={data_overrides["dataset"]}',
        f'--config.data_dir={data_overrides["data_dir"]}', '--config.download=False',
        '--config.total_steps=200', '--config.batch_size=64', '--config.evals.test.every=200',
        '--config.checkpoint_every=200', '--config.evals.test.split=test[:300]')
    runs[name] = (workdir, float(re.findall(r'\btest/accuracy=([\d.]+)', out)[-1]))
  return runs


def _fewshot(path, data_overrides):
  out = run_python('-m', 'vit_jax.tools.fewshot', f'--checkpoint={path}',
                   f'--dataset={data_overrides["dataset"]}',
                   f'--data_dir={data_overrides["data_dir"]}', '--train_split=train[:300]',
                   '--test_split=test[:300]', '--shots=1,5')
  return dict(re.findall(r'^(fewshot_\d+shot): ([\d.]+)$', out, re.M))


@pytest.mark.slow
def test_every_tool_runs_on_the_export_and_its_conversion(exports, data_overrides, tmp_path):
  config = tiny_config.for_data(data_overrides, test_eval=dict(split='test[:300]'))
  paths, labels = write_eval_pngs(config, str(tmp_path), 300)
  for name, (workdir, accuracy) in exports.items():
    files = [workdir / 'model.npz']
    if 'scratch' in name:  # The ViT converts to timm; the card and state go with it.
      run_python('-m', 'vit_jax.tools.convert', f'--from={workdir / "model.npz"}',
                 f'--to={workdir / "timm.safetensors"}')
      files.append(workdir / 'timm.safetensors')
    shots = []
    for path in files:
      top1, header = classify_cli(path, paths)
      ours = np.mean([top1[p][0] == y for p, y in zip(paths, labels)])
      # Fed as the job's evaluation fed it (the card's normalisation): the same accuracy.
      assert abs(ours - accuracy) <= 0.01, (name, path.name, ours, accuracy, header)
      shots.append(_fewshot(path, data_overrides))
      assert set(shots[-1]) == {'fewshot_1shot', 'fewshot_5shot'}, shots[-1]
      if 'scratch' in name:
        figure = tmp_path / f'{path.stem}_attention.png'
        run_python('-m', 'vit_jax.tools.visualize', 'attention', f'--checkpoint={path}',
                   f'--image={paths[0]}', f'--output={figure}')
        assert np.asarray(Image.open(figure)).std() > 0
    assert all(s == shots[0] for s in shots), (name, shots)  # Same weights, same accuracies.
