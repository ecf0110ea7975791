"""BatchNorm ResNets in the training loop: falling loss through the real train step, running
statistics in the eval step, and batch_stats saved and restored by the training checkpoints;
plus the ResNet/BiT/hybrid/CNN experiment configs."""

import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from helpers import job_for, load_config, make_image_folder, state_and_step, stepper
from vit_jax import checkpoint
from vit_jax.training import accumulation
from vit_jax.training import base_config
from vit_jax.training import optim
from vit_jax.training import sharding
from vit_jax.training import step as step_lib
from vit_jax.training import train



def resnet_config(**overrides):
  """A seconds-scale BatchNorm ResNet run: one basic unit of width 8 on 32 px images."""
  config = base_config.get_config()
  config.model_name = 'ResNet-18'
  config.model = {'num_layers': (1,), 'width': 8}
  config.image_size = 32
  config.batch_size = 32
  config.eval_batch_size = 32
  config.total_steps = 40
  config.optimizer.name = 'sgd'
  config.optimizer.momentum = 0.9
  config.lr.base = 0.05
  config.lr.warmup_steps = 2
  config.lr.decay_type = 'cosine'
  config.update(overrides)
  return base_config.with_model_fields(config)


def banded_batch(rng, batch_size, num_classes=3, size=32):
  """Class k: noise with a bright k-th vertical band (the images of helpers.make_image_folder)."""
  labels = rng.integers(0, num_classes, batch_size)
  images = rng.uniform(-1., -0.2, (batch_size, size, size, 3)).astype(np.float32)
  band = size // num_classes
  for i, label in enumerate(labels):
    images[i, :, label * band:(label + 1) * band] += 1.2
  return {'image': images, 'label': labels.astype(np.int32)}


def test_batchnorm_resnet_trains_and_evaluates_with_running_statistics():
  config = resnet_config()
  job = job_for(config, 3)
  state = job.init_state()
  initial_stats = jax.device_get(state.model_state['batch_stats'])
  assert set(initial_stats) == {'bn_root', 'block1'}

  step = stepper(job)
  rng = np.random.default_rng(0)
  losses = []
  for _ in range(config.total_steps):
    state, metrics = step(state, banded_batch(rng, config.batch_size))
    losses.append(float(metrics['loss']))
  assert np.isfinite(losses).all()
  assert np.mean(losses[-8:]) < 0.5 * np.mean(losses[:8]), losses

  # The train step carried the running statistics along.
  stats = jax.device_get(state.model_state['batch_stats'])
  assert np.abs(stats['bn_root']['mean'] - initial_stats['bn_root']['mean']).max() > 1e-3
  assert np.abs(stats['block1']['unit1']['bn2']['var'] - 1.).max() > 1e-3

  # The eval step normalises with them: its loss is that of `train=False` with the state's
  # statistics, and moves when they change.
  batch = banded_batch(rng, config.eval_batch_size)
  batch['mask'] = np.ones(config.eval_batch_size, np.float32)
  model = job.model
  eval_step = jax.jit(step_lib.make_eval_step(model))
  sums = eval_step(state, batch)
  logits = model.apply({'params': state.params, 'batch_stats': stats}, batch['image'])
  expected = -jnp.take_along_axis(jax.nn.log_softmax(logits), batch['label'][:, None], 1).sum()
  np.testing.assert_allclose(sums['loss_sum'], expected, rtol=1e-4)
  assert int(sums['correct_top1']) >= 0.9 * config.eval_batch_size
  reset = state.replace(model_state={'batch_stats': initial_stats})
  assert abs(float(eval_step(reset, batch)['loss_sum']) - float(sums['loss_sum'])) > 1e-2


def batch_stats_leaves(model_state):
  return [np.asarray(x) for x in jax.tree.leaves(model_state['batch_stats'])]


def _restore_model_state(workdir, step):
  manager = ocp.CheckpointManager(os.path.join(workdir, 'checkpoints'))
  restored = manager.restore(step, args=ocp.args.StandardRestore())
  return jax.device_get(restored['model_state'] if isinstance(restored, dict)
                        else restored.model_state)


@pytest.mark.slow
def test_batch_stats_are_saved_and_restored_by_training_checkpoints(tmp_path):
  data = make_image_folder(str(tmp_path / 'images'), splits=(('train', 32), ('test', 8)))
  config = resnet_config(
      dataset='imagefolder', data_dir=data, download=False,
      pp_train='resize|flip_lr|value_range(-1, 1)', pp_eval='resize|value_range(-1, 1)', shuffle_buffer=96, batch_size=16, eval_batch_size=24,
      total_steps=3, log_every=1, checkpoint_every=1, keep_checkpoints=3, export_npz=False)
  config.evals.test.every = 3
  workdir = str(tmp_path / 'run')
  first = train.train_and_evaluate(config, workdir)
  assert first['step'] == 3 and first['test/examples'] == 24
  saved = {s: _restore_model_state(workdir, s) for s in (2, 3)}
  assert any(np.abs(a - b).max() > 0 for a, b in zip(batch_stats_leaves(saved[2]), batch_stats_leaves(saved[3])))

  # Lose the last checkpoint: the rerun resumes from step 2 and must reach the same statistics,
  # which it can only do if step 2's running averages were restored, not re-initialised.
  shutil.rmtree(os.path.join(workdir, 'checkpoints', '3'))
  second = train.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, 'train.0.log')) as f:
    assert 'Resumed from the checkpoint of step 2' in f.read()
  for a, b in zip(batch_stats_leaves(_restore_model_state(workdir, 3)), batch_stats_leaves(saved[3])):
    np.testing.assert_array_equal(a, b)
  assert second['test/loss'] == pytest.approx(first['test/loss'], abs=1e-6)


def test_weight_ema_averages_the_batch_statistics_too():
  # timm's ModelEmaV3: every floating-point entry of the state dict (parameters and BatchNorm
  # running mean / var) follows ema = decay * ema + (1 - decay) * live after each step.
  state, step = state_and_step(resnet_config(ema_decay=0.75), 3)
  as_f64 = lambda tree: jax.tree.map(lambda x: np.asarray(x, np.float64), tree)
  expected = as_f64((state.params, state.model_state))
  rng = np.random.default_rng(0)
  for _ in range(4):
    state, _ = step(state, banded_batch(rng, 32))
    expected = jax.tree.map(lambda e, x: 0.75 * e + 0.25 * x, expected,
                            as_f64((state.params, state.model_state)))
  got = (state.ema_params, state.ema_model_state)
  assert jax.tree.structure(got) == jax.tree.structure(expected)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  live, ema = batch_stats_leaves(state.model_state), batch_stats_leaves(state.ema_model_state)
  assert max(np.abs(a - b).max() for a, b in zip(live, ema)) > 1e-3


def test_weight_ema_statistics_are_exported_and_resumed_exactly(tmp_path):
  data = make_image_folder(str(tmp_path / 'images'), splits=(('train', 32), ('test', 8)))
  config = resnet_config(
      dataset='imagefolder', data_dir=data, download=False, ema_decay=0.5,
      pp_train='resize|flip_lr|value_range(-1, 1)', pp_eval='resize|value_range(-1, 1)',
      shuffle_buffer=96, batch_size=16, eval_batch_size=8, total_steps=3, log_every=1,
      checkpoint_every=1, keep_checkpoints=3)
  config.evals.test.every = 3
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(config, workdir)
  exported = checkpoint.flatten(checkpoint.load(os.path.join(workdir, 'model_ema_state.npz')))
  live = checkpoint.flatten(checkpoint.load(os.path.join(workdir, 'model_state.npz')))
  assert exported.keys() == live.keys()
  assert any(np.abs(exported[k] - live[k]).max() > 1e-4 for k in live)
  # Lose the last checkpoint: the rerun resumes from step 2 and exports the same averages.
  shutil.rmtree(os.path.join(workdir, 'checkpoints', '3'))
  train.train_and_evaluate(config, workdir)
  again = checkpoint.flatten(checkpoint.load(os.path.join(workdir, 'model_ema_state.npz')))
  for key in exported:
    np.testing.assert_array_equal(again[key], exported[key], err_msg=key)


# ---------------------------------------------------------------------------------------------
# Gradient accumulation and BatchNorm (issue 28).


def test_micro_batch_statistics_merge_into_the_whole_batch_s_update():
  """flax's own BatchNorm on the whole batch is the reference: micro-batches of different means,
  each updating the same running statistics, merge into the whole batch's one update."""
  bn = nn.BatchNorm(use_running_average=False, momentum=0.9)
  rng = np.random.default_rng(0)
  x = rng.standard_normal((16, 4, 4, 3)).astype(np.float32)
  x += np.tile(np.arange(4, dtype=np.float32), 4)[:, None, None, None]  # Rows j::4 differ.
  old = {'mean': rng.standard_normal(3).astype(np.float32),
         'var': rng.uniform(0.5, 2., 3).astype(np.float32)}
  variables = {'params': bn.init(jax.random.key(0), x)['params'], 'batch_stats': old}
  _, whole = bn.apply(variables, x, mutable=['batch_stats'])
  micro = [bn.apply(variables, x[j::4], mutable=['batch_stats'])[1] for j in range(4)]
  stacked = jax.tree.map(lambda *m: jnp.stack(m), *micro)
  merged = accumulation.merge_model_states({'batch_stats': old}, stacked, 0.9)
  for key in ('mean', 'var'):
    np.testing.assert_allclose(merged['batch_stats'][key], whole['batch_stats'][key],
                               rtol=1e-5, atol=1e-6)
  # The spread of the micro-batch means is what the variance needs beyond their average.
  averaged = np.mean(np.stack([m['batch_stats']['var'] for m in micro]), 0)
  assert np.abs(averaged - whole['batch_stats']['var']).max() > 1e-2
  with pytest.raises(ValueError, match='BatchNorm momentum'):
    accumulation.merge_model_states({'batch_stats': old}, stacked, None)


def test_accumulation_updates_the_running_statistics_once_per_step():
  """ResNet, one step at accum_steps 1 and 4 from the same state: the root BatchNorm sees the
  same images in both, so its running statistics must be equal; every layer's must move about
  as far (chained per micro-batch they moved 1 - 0.9^4 / 0.1 = 3.4 times as far)."""
  rng = np.random.default_rng(0)
  batch = banded_batch(rng, 16)
  batch["image"] += np.tile(np.arange(4, dtype=np.float32) / 4, 4)[:, None, None, None]
  stats, caveats = {}, {}
  for accum in (1, 4):
    job = job_for(resnet_config(batch_size=16, accum_steps=accum), 3)
    state = job.init_state()
    new_state, _ = stepper(job)(state, batch)
    old, new = (jax.device_get(s.model_state['batch_stats']) for s in (state, new_state))
    stats[accum] = jax.tree.map(lambda n, o: n - o, new, old)
    caveats[accum] = job.accumulation_caveats()
  for key in ('mean', 'var'):
    np.testing.assert_allclose(stats[4]['bn_root'][key], stats[1]['bn_root'][key], rtol=1e-4,
                               atol=1e-6)
  for one, four in zip(jax.tree.leaves(stats[1]), jax.tree.leaves(stats[4])):
    assert 0.5 < np.linalg.norm(four) / np.linalg.norm(one) < 2
  # The forward pass cannot be the whole batch's: the job says so.
  assert caveats[1] == [] and 'ghost batch norm' in caveats[4][0]


def test_a_job_with_batchnorm_and_accumulation_logs_that_it_is_not_one_batch(tmp_path):
  """Issue 28: the run's log says, at start, that micro-batches are normalised by their own
  statistics (ghost batch norm)."""
  data = make_image_folder(str(tmp_path / 'images'), splits=(('train', 16), ('test', 8)))
  logs = {}
  for accum in (1, 2):
    config = resnet_config(
        dataset='imagefolder', data_dir=data, download=False, pp_train='resize',
        pp_eval='resize', shuffle_buffer=16, batch_size=8, accum_steps=accum, total_steps=1,
        export_npz=False)
    config.evals.test.every = 0
    workdir = tmp_path / f'accum_{accum}'
    train.train_and_evaluate(config, str(workdir))
    logs[accum] = (workdir / 'train.0.log').read_text()
  assert 'ResNet-18 has BatchNorm: with accum_steps=2' in logs[2]
  assert 'ghost batch norm' in logs[2] and 'ghost batch norm' not in logs[1]


# ---------------------------------------------------------------------------------------------
# Configs.


@pytest.mark.parametrize('dataset,steps,boundaries,warmup,crop,mixup', [
    ('oxford_flowers102', 500, (200, 300, 400), 100, 480, None),
    ('cifar10', 10_000, (3_000, 6_000, 9_000), 500, 128, 0.1),
    ('imagenet2012', 20_000, (6_000, 12_000, 18_000), 500, 480, 0.1),
])
def test_bit_hyperrule(dataset, steps, boundaries, warmup, crop, mixup):
  config = load_config('bit_hyperrule.py', f'BiT-M-R50x1,{dataset}')
  assert (config.total_steps, tuple(config.lr.boundaries), config.lr.warmup_steps) == (
      steps, boundaries, warmup)
  assert config.image_size == crop and config.batch_size == 512
  assert (config.mixup.mixup_alpha if config.mixup else None) == mixup
  assert config.optimizer.name == 'sgd' and config.optimizer.weight_decay == 0
  _, schedule = optim.make_optimizer(config, {'w': jnp.zeros(3)})

  def lr(step):  # Steps count from 1; optax counts updates from 0.
    return float(schedule(step - 1))

  assert lr(warmup) == pytest.approx(0.003)
  assert lr(boundaries[0] - 1) == pytest.approx(0.003)
  assert lr(boundaries[0]) == pytest.approx(3e-4)
  assert lr(steps) == pytest.approx(3e-6)


@pytest.mark.parametrize('name,arg,model_name', [
    ('bit_hyperrule.py', 'BiT-M-R101x3,oxford_iiit_pet', 'BiT-M-R101x3'),
    ('finetune_hybrid.py', 'R50+ViT-B_16,cifar10', 'R50+ViT-B_16'),
    ('cifar10_cnn.py', '', 'CNN-CIFAR'),
    ('cifar10_cnn.py', 'quick', 'CNN-CIFAR'),
])
def test_configs_build_model_and_optimizer(name, arg, model_name):
  config = load_config(name, arg)
  assert config.model_name == model_name
  model = step_lib.create_model(config, 10)
  size = config.image_size
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                             jnp.zeros((1, size, size, 3))))['params']
  tx, _ = optim.make_optimizer(config, params)
  jax.eval_shape(tx.init, params)


def test_cnn_config_mirrors_the_vit_scratch_config():
  cnn = load_config('cifar10_cnn.py', 'quick')
  vit = load_config('cifar10_scratch.py', 'quick')
  cnn_fields, vit_fields = cnn.to_dict(), vit.to_dict()
  # The model (its name and its full field set) is the only difference.
  assert {k for k in cnn_fields if cnn_fields[k] != vit_fields[k]} == {'model_name', 'model'}


def test_configs_reject_wrong_models():
  with pytest.raises(ValueError, match='fine-tunes BiT models'):
    load_config('bit_hyperrule.py', 'ViT-B_16,cifar10')
  with pytest.raises(ValueError, match='fine-tunes hybrid models'):
    load_config('finetune_hybrid.py', 'ViT-B_16,cifar10')
  with pytest.raises(ValueError, match='Unknown BiT-HyperRule dataset'):
    load_config('bit_hyperrule.py', 'BiT-M-R50x1,mnist')
