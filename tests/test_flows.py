"""The README's flows run as a user runs them, each asserting its outcome.

- fine-tuning uses (and trains) the pre-trained parameters: structurally and by accuracy;
- an image folder of any image sizes trains and evaluates with any `pp_eval`;
- `classify` on the model a job exported agrees with the job's own evaluation, with the class
  names of the data;
- Swin and BatchNorm ResNet exports are the `pretrained_path` of a new run and classify;
- with the real ViT-Ti/16 weights (where the workplace has them): convert, fine-tune on CIFAR-10
  far above chance, and classify real photos.
"""

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from helpers import (REPO, cifar_dir, classify_cli, job_for, make_image_folder, run_python, stepper,
                     write_eval_pngs)
import tiny_config
from vit_jax import checkpoint
from vit_jax.models import card as card_lib
from vit_jax.models import loader
from vit_jax.training import step as step_lib
from vit_jax.training import train

WEIGHTS = os.path.join(REPO, '..', 'shared', 'data', 'weights',
                       'vit_tiny_patch16_224_in1k.safetensors')
# ---------------------------------------------------------------------------------------------
# Fine-tuning sees the given parameters.


def test_given_parameters_are_the_only_parameters_and_receive_gradients():
  config = tiny_config.get_config()
  config.model.transformer.dropout_rate = 0.
  model = step_lib.create_model(config, 10)
  fresh = model.init(jax.random.PRNGKey(1), jnp.zeros((1, 32, 32, 3)))['params']
  # "Pre-trained": noise everywhere and a non-zero head, unlike the fresh zero head.
  given = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.PRNGKey(2), x.shape),
                       fresh)
  job = job_for(config, 10, params=given)
  state = job.init_state(given)
  assert 'params' not in state.model_state
  np.testing.assert_array_equal(state.params['head']['kernel'], given['head']['kernel'])

  rng = np.random.default_rng(0)
  batch = {'image': rng.standard_normal((32, 32, 32, 3)).astype(np.float32),
           'label': rng.integers(0, 10, 32).astype(np.int32), 'mask': np.ones(32, np.float32)}
  expected_logits = model.apply({'params': given}, batch['image'], train=False)
  with jax.set_mesh(job.mesh):
    eval_sums = job.eval_step(state, batch)
  expected_hits = np.sum(np.argmax(expected_logits, -1) == batch['label'])
  assert int(eval_sums['correct_top1']) == expected_hits
  step = stepper(job)
  new_state, metrics = step(state, batch)
  assert float(metrics['grad_norm']) > 0
  moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), new_state.params, given)
  assert all(v > 0 for v in jax.tree.leaves(moved)), moved


# ---------------------------------------------------------------------------------------------
# The job's export in the tools.


def _varied_size_folder(root, per_class_train=60, per_class_test=20):
  """Banded 3-class images (helpers.make_image_folder) saved at sizes between 24 and 48 px."""
  make_image_folder(root, splits=(('train', per_class_train), ('test', per_class_test)))
  rng = np.random.default_rng(1)
  for split in ('train', 'test'):
    for folder, _, files in os.walk(os.path.join(root, split)):
      for f in files:
        path = os.path.join(folder, f)
        w, h = rng.integers(24, 49, 2)
        Image.open(path).resize((int(w), int(h)), Image.BILINEAR).save(path)
  return root


@pytest.mark.slow
def test_image_folder_of_any_sizes_trains_exports_and_classifies(tmp_path):
  root = _varied_size_folder(str(tmp_path / 'images'))
  workdir = tmp_path / 'run'
  out = run_python('-m', 'vit_jax.main', f'--config={REPO}/tests/tiny_config.py:imagefolder',
             f'--workdir={workdir}', f'--config.data_dir={root}', '--config.train_split=train',
             '--config.evals.test.split=test', '--config.total_steps=60',
             '--config.evals.test.every=60', '--config.model.transformer.dropout_rate=0.')
  accuracy = float(re.findall(r'\btest/accuracy=([\d.]+)', out)[-1])
  assert accuracy > 0.6, out[-2000:]  # 3 classes: chance is 1/3.

  card = json.loads((workdir / 'model.json').read_text())
  assert card['class_names'] == ['class_0', 'class_1', 'class_2']
  assert card['normalization'] == 'cifar10' and card['image_size'] == [32, 32]
  images = sorted((tmp_path / 'images' / 'test').glob('*/*.png'))
  top1, header = classify_cli(workdir / 'model.npz', images)
  assert 'labels from the model card' in header and 'cifar10 pixels' in header
  hits = [top1[str(p)][1] == p.parent.name for p in images]
  # The tool resizes with Pillow, the pipeline with TF: a few images may flip.
  assert abs(np.mean(hits) - accuracy) <= 0.05, (np.mean(hits), accuracy)


@pytest.mark.slow
@pytest.mark.skipif(cifar_dir() is None, reason='needs the offline CIFAR-10')
def test_classify_agrees_with_the_jobs_evaluation_on_cifar10(tmp_path):
  workdir = tmp_path / 'run'
  out = run_python('-m', 'vit_jax.main', f'--config={REPO}/tests/tiny_config.py:cifar10',
             f'--workdir={workdir}', f'--config.data_dir={cifar_dir()}',
             '--config.total_steps=150', '--config.evals.test.every=150',
             '--config.batch_size=64', '--config.model.transformer.dropout_rate=0.')
  accuracy = float(re.findall(r'\btest/accuracy=([\d.]+)', out)[-1])
  assert accuracy > 0.2, out[-2000:]  # 10 classes: chance is 0.1.
  config = tiny_config.get_config('cifar10')
  config.data_dir = cifar_dir()
  paths, labels = write_eval_pngs(config, str(tmp_path), 300)  # test[:300], the job's eval split
  top1, header = classify_cli(workdir / 'model.npz', paths)
  assert 'cifar10 pixels' in header
  ours = np.mean([top1[p][0] == y for p, y in zip(paths, labels)])
  assert abs(ours - accuracy) <= 0.01, (ours, accuracy)  # The same pixels: within 1 point.


def test_card_that_contradicts_the_checkpoint_is_an_error(tmp_path):
  config = tiny_config.get_config()
  model = step_lib.create_model(config, 10)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))['params']
  card = card_lib.make_card(model_name='ViT-CIFAR_4', model_overrides=config.model,
                            num_classes=10, class_names=None, image_size=32,
                            pp_eval=config.pp_eval, normalization='cifar10')
  path = tmp_path / 'model.npz'
  card_lib.write_model(path, params, None, card)
  loaded = loader.load(str(path))
  assert loaded.normalization == 'cifar10' and loaded.image_size == (32, 32)
  assert loader.load(str(path), normalization='imagenet').normalization == 'imagenet'
  with pytest.raises(checkpoint.CheckpointError, match='says 7 classes.*head has 10'):
    card_lib.write_model(path, params, None, {**card, 'num_classes': 7})
    loader.load(str(path))
  wider = {**card, 'model_overrides': {**card['model_overrides'], 'hidden_size': 64}}
  card_lib.write_model(path, params, None, wider)
  with pytest.raises(checkpoint.CheckpointError, match='hidden_size|shape'):
    loader.load(str(path))


# ---------------------------------------------------------------------------------------------
# Swin and BatchNorm models: export -> pretrained_path of a new run -> classify.


_FAMILY_RUNS = {
    'swin': dict(model_name='Swin-T', model={'embed_dim': 16, 'depths': (1, 1),
                                             'num_heads': (1, 2), 'window_size': 4,
                                             'patch_size': 4}),
    'resnet': dict(model_name='ResNet-18', model={'num_layers': (1,), 'width': 8}),
}


@pytest.mark.slow
@pytest.mark.parametrize('family', sorted(_FAMILY_RUNS))
def test_swin_and_batchnorm_exports_fine_tune_and_classify(tmp_path, family):
  root = make_image_folder(str(tmp_path / 'images'), splits=(('train', 64), ('test', 16)))
  config = tiny_config.get_config('imagefolder')
  config.update(data_dir=root, train_split='train', total_steps=60, checkpoint_every=60,
                pp_train='normalize("cifar10")')
  config.evals.test.update(split='test', every=60)
  config.lr.base = 3e-3
  config.model_name = _FAMILY_RUNS[family]['model_name']
  config.model = _FAMILY_RUNS[family]['model']
  first = train.train_and_evaluate(config, str(tmp_path / 'first'))
  exported = tmp_path / 'first' / 'model.npz'
  assert first['test/accuracy'] > 0.5, first

  config.pretrained_path = str(exported)
  config.total_steps = 2
  config.evals.test.every = 2
  config.lr.base = 1e-6  # A near-zero step: the new run starts where the first one ended.
  second = train.train_and_evaluate(config, str(tmp_path / 'second'))
  # The head is reset when fine-tuning; the features carry over, so the new run's accuracy after
  # two tiny steps says little. The loaded backbone must equal the exported one.
  loaded = checkpoint.flatten(checkpoint.load(str(tmp_path / 'second' / 'model.npz')))
  original = checkpoint.flatten(checkpoint.load(str(exported)))
  for key in original:
    if not key.startswith('head'):
      np.testing.assert_allclose(loaded[key], original[key], atol=1e-4, err_msg=key)
  assert second['step'] == 2

  images = sorted((tmp_path / 'images' / 'test').glob('*/*.png'))
  top1, _ = classify_cli(exported, images)
  hits = np.mean([top1[str(p)][1] == p.parent.name for p in images])
  assert abs(hits - first['test/accuracy']) <= 0.05, (hits, first['test/accuracy'])


# ---------------------------------------------------------------------------------------------
# The real ViT-Ti/16 (ImageNet-1k) weights.


needs_weights = pytest.mark.skipif(not os.path.exists(WEIGHTS),
                                   reason='needs the real ViT-Ti/16 weights in ../shared')


@pytest.fixture(scope='module')
def real_npz(tmp_path_factory):
  pytest.importorskip('safetensors')
  path = tmp_path_factory.mktemp('weights') / 'ti16.npz'
  run_python('-m', 'vit_jax.tools.convert', f'--from={WEIGHTS}', f'--to={path}', '--model=ViT-Ti_16')
  return path


@pytest.mark.slow
@needs_weights
def test_real_checkpoint_classifies_real_photos(real_npz, tmp_path):
  skimage_data = pytest.importorskip('skimage.data')
  Image.fromarray(skimage_data.chelsea()).save(tmp_path / 'chelsea.png')
  Image.fromarray(skimage_data.coffee()).save(tmp_path / 'coffee.png')
  top1, header = classify_cli(real_npz, [tmp_path / 'chelsea.png', tmp_path / 'coffee.png'])
  assert header.startswith('1000 classes (imagenet2012 labels)'), header
  assert top1[str(tmp_path / 'chelsea.png')][0] in range(281, 286)  # the cat classes
  assert top1[str(tmp_path / 'coffee.png')][0] == 967  # espresso


@pytest.mark.slow
@needs_weights
@pytest.mark.skipif(cifar_dir() is None, reason='needs the offline CIFAR-10')
def test_fine_tuning_the_real_checkpoint_learns_cifar10(real_npz, tmp_path):
  config = tiny_config.get_config('cifar10')
  config.model_name = 'ViT-Ti_16'
  config.model = {'transformer': {'gelu_approximate': False}}  # timm's weights: exact GELU
  config.update(
      data_dir=cifar_dir(), pretrained_path=str(real_npz), image_size=64,
      train_split='train[:2000]',
      pp_train='inception_crop(area_min=50)|flip_lr|value_range(-1, 1)',
      pp_eval='resize|value_range(-1, 1)', batch_size=32, eval_batch_size=100,
      total_steps=40, checkpoint_every=40, log_every=10)
  config.evals.test.update(split='test[:500]', every=40)
  config.optimizer.name = 'sgd'
  config.optimizer.momentum = 0.9
  config.grad_clip_norm = 1.
  config.lr.base = 0.03
  config.lr.warmup_steps = 5
  config.lr.decay_type = 'cosine'
  result = train.train_and_evaluate(config, str(tmp_path))
  assert result['test/accuracy'] > 0.5, result  # chance: 0.1
  log = (tmp_path / 'train.0.log').read_text()
  losses = [float(x) for x in re.findall(r'loss ([\d.]+)  acc', log)]
  assert losses[-1] < losses[0] - 0.5, losses
