"""Training: loss goes down on real data, exact resume after SIGKILL, exact evaluation,
fine-tuning at a higher resolution, gradient accumulation, weight EMA, clear errors."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from helpers import REPO, job_for, run_main, state_and_step
import tiny_config
from vit_jax import checkpoint
from vit_jax.data import input_pipeline
from vit_jax.training import evaluators
from vit_jax.training import step as step_lib
from vit_jax.training import train
from vit_jax.training import workdir

make_config = tiny_config.for_data


def test_loss_decreases_on_real_data(data_overrides):
  config = make_config(data_overrides, total_steps=60, batch_size=64)
  config.model.transformer.dropout_rate = 0.0
  source = input_pipeline.get_source(config.dataset, config.train_split,
                                     data_dir=config.data_dir)
  job = job_for(config, source.num_classes)
  state = job.init_state()
  ds = input_pipeline.train_dataset(job.config, source, config.batch_size)
  losses = []
  with jax.set_mesh(job.mesh):
    for batch in input_pipeline.prefetch_to_mesh(ds.take(60).as_numpy_iterator(),
                                                 job.batch_sharding):
      state, metrics = job.train_step(state, batch, None)
      losses.append(float(metrics['loss']))
  assert np.isfinite(losses).all()
  assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 0.1, losses


def test_eval_counts_every_example_once(data_overrides):
  config = make_config(data_overrides)
  source = input_pipeline.get_source(config.dataset, config.evals.test.split,
                                     data_dir=config.data_dir)
  ds, num_batches = input_pipeline.eval_dataset(source, 64, pp=config.pp_eval, image_size=32,
                                                skip_corrupt_images=True)
  batches = list(ds.as_numpy_iterator())
  masks = np.concatenate([b['mask'] for b in batches])
  assert len(batches) == num_batches == 5
  assert masks.sum() == source.num_examples == 300
  assert (masks[:300] == 1).all() and (masks[300:] == 0).all()

  # The jitted eval step's sums equal a NumPy reference on the same logits.
  job = job_for(config, 10)
  state = job.init_state()
  state = state.replace(params=jax.tree.map(lambda p: p + 0.02 * jnp.sin(
      jnp.arange(p.size, dtype=jnp.float32).reshape(p.shape)), state.params))
  model = job.model
  with jax.set_mesh(job.mesh):
    metrics = evaluators.evaluate(job.eval_step, state, job.batch_sharding, (ds, num_batches))
  images = np.concatenate([b['image'] for b in batches])[:300]
  labels = np.concatenate([b['label'] for b in batches])[:300]
  logits = np.asarray(model.apply({'params': state.params}, images))
  assert metrics['examples'] == 300
  np.testing.assert_allclose(metrics['accuracy'], np.mean(logits.argmax(-1) == labels))
  top5 = np.argsort(-logits, axis=-1)[:, :5]
  np.testing.assert_allclose(metrics['top5_accuracy'],
                             np.mean((top5 == labels[:, None]).any(-1)))


def test_sigkill_and_resume_gives_identical_parameters(tmp_path, data_overrides):
  straight, killed = tmp_path / 'straight', tmp_path / 'killed'
  run_main(straight, data_overrides)
  run_main(killed, data_overrides, kill_after_checkpoint=4)
  out = run_main(killed, data_overrides)
  assert 'Resumed from the checkpoint of step' in (killed / 'train.0.log').read_text()
  assert 'Final:' in out
  a = checkpoint.flatten(checkpoint.load(straight / 'model.npz'))
  b = checkpoint.flatten(checkpoint.load(killed / 'model.npz'))
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  # Only the last keep_checkpoints=2 checkpoints remain, and never a temporary one.
  assert sorted(os.listdir(straight / 'checkpoints')) == ['12', '8']


@pytest.mark.slow
def test_finetune_from_32px_checkpoint_at_48px(tmp_path, data_overrides):
  config = make_config(data_overrides, total_steps=2, checkpoint_every=2, log_every=1,
                       test_eval=dict(split='test[:64]', every=2))
  pretrain_dir = tmp_path / 'pretrain'
  train.train_and_evaluate(config, str(pretrain_dir))
  pretrained = checkpoint.load(pretrain_dir / 'model.npz')
  assert pretrained['Transformer']['posembed_input']['pos_embedding'].shape == (1, 17, 32)

  config = make_config(data_overrides, total_steps=2, checkpoint_every=2, log_every=1,
                       image_size=48, num_classes=12, test_eval=dict(split='test[:64]', every=2),
                       pretrained_path=str(pretrain_dir / 'model.npz'),
                       pp_train='inception_crop|flip_lr|value_range(-1, 1)',
                       pp_eval='resize|value_range(-1, 1)')
  config.optimizer.name = 'sgd'
  config.lr.base = 0.0  # Only the loading is under test: parameters must stay as loaded.
  metrics = train.train_and_evaluate(config, str(tmp_path / 'finetune'))
  assert metrics['step'] == 2
  tuned = checkpoint.load(tmp_path / 'finetune' / 'model.npz')
  posemb = tuned['Transformer']['posembed_input']['pos_embedding']
  assert posemb.shape == (1, 37, 32)
  expected = checkpoint.interpolate_posembed(
      pretrained['Transformer']['posembed_input']['pos_embedding'], 37)
  np.testing.assert_allclose(posemb, expected, atol=1e-6)
  assert tuned['head']['kernel'].shape == (32, 12)


def _one_step(config, batch, accum, steps=1):
  """(state after `steps` steps at `accum_steps=accum`, the metrics of each, the initial
  parameters)."""
  config.accum_steps = accum
  state, step = state_and_step(config, 10)
  first_params, metrics = state.params, []
  for _ in range(steps):
    state, m = step(state, batch)
    metrics.append(m)
  return state, metrics, first_params


def _assert_trees_close(a, b, atol):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, atol=atol, rtol=0)


def test_gradient_accumulation_equals_one_big_batch(data_overrides):
  config = make_config(data_overrides, batch_size=32)
  config.model.transformer.dropout_rate = 0.0
  batch = {'image': jax.random.normal(jax.random.PRNGKey(1), (32, 32, 32, 3)),
           'label': jnp.arange(32) % 10}
  (one, one_metrics, first_params), (four, four_metrics, _) = (
      _one_step(config, batch, accum, steps=2) for accum in (1, 4))
  _assert_trees_close(one.params, four.params, atol=2e-5)
  # The same optimizer state, layout and values: no accumulator is kept, and a checkpoint resumes
  # under another accum_steps.
  _assert_trees_close(one.opt_state, four.opt_state, atol=2e-5)
  # The logged norm under accumulation is that of the averaged gradient (what
  # clip_by_global_norm sees), computed here directly on the whole batch.
  model = step_lib.create_model(config, 10)

  def loss(params):
    logits = model.apply({'params': params}, batch['image'], train=False)
    return jnp.mean(step_lib.cross_entropy(logits, jax.nn.one_hot(batch['label'], 10)))
  grads = jax.grad(loss)(first_params)
  reference = float(np.sqrt(sum(np.sum(np.square(g)) for g in jax.tree.leaves(grads))))
  norms = [float(m[0]['grad_norm']) for m in (one_metrics, four_metrics)]
  np.testing.assert_allclose(norms, [reference, reference], rtol=1e-4)


@pytest.mark.parametrize('skipped', [[3], [1, 5]], ids=['one image', 'a whole micro-batch'])
def test_gradient_accumulation_with_skipped_images_equals_one_big_batch(data_overrides,
                                                                        skipped):
  """Issue 28: each micro-batch divided by its own count of images; rows 1 and 5 are the whole
  second micro-batch of 4 (micro-batch j holds rows j, j + 4)."""
  config = make_config(data_overrides, batch_size=8, grad_clip_norm=0.0)
  config.model.transformer.dropout_rate = 0.0
  config.optimizer.name = 'sgd'
  config.lr.update(base=0.5, warmup_steps=0, decay_type='constant')
  mask = np.ones(8, np.float32)
  mask[skipped] = 0
  batch = {'image': np.asarray(jax.random.normal(jax.random.PRNGKey(1), (8, 32, 32, 3))),
           'label': np.arange(8, dtype=np.int32) % 10, 'mask': mask}
  (one, one_metrics, first), (four, four_metrics, _) = (
      _one_step(config, batch, accum) for accum in (1, 4))
  moved = max(float(np.abs(a - b).max())
              for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(first)))
  assert moved > 1e-2  # The step is large enough to tell the two apart.
  _assert_trees_close(one.params, four.params, atol=1e-6)
  for key in ('loss', 'accuracy', 'grad_norm'):
    np.testing.assert_allclose(four_metrics[0][key], one_metrics[0][key], rtol=1e-5)
  assert int(four_metrics[0]['skipped']) == len(skipped)


@pytest.mark.slow
def test_a_checkpoint_of_another_state_layout_is_refused_by_name(tmp_path):
  """E.g. one written with optax.MultiSteps state (accum_steps > 1 before it was dropped)."""
  params = {'w': jnp.ones((4, 3))}
  manager = workdir.checkpoint_manager(str(tmp_path), 2)
  old = optax.MultiSteps(optax.adam(1e-3), every_k_schedule=2)
  workdir.save_checkpoint(manager, 5, {'params': params, 'opt_state': old.init(params)})
  manager.wait_until_finished()
  state = {'params': params, 'opt_state': optax.adam(1e-3).init(params)}
  with pytest.raises(ValueError, match=r'(?s)step 5 in .*does not hold the state.*opt_state'):
    workdir.restore_latest(manager, state, jax.tree.map(lambda x: x.sharding, state))


def test_checkpoint_every_0_saves_only_the_last_step(tmp_path, data_overrides):
  config = make_config(data_overrides, total_steps=5, checkpoint_every=0, export_npz=False)
  train.train_and_evaluate(config, str(tmp_path))
  assert sorted(s for s in os.listdir(tmp_path / 'checkpoints') if s.isdigit()) == ['5']


def test_nan_loss_stops_with_the_step_and_keeps_last_checkpoint(tmp_path, data_overrides):
  config = make_config(data_overrides, total_steps=8, checkpoint_every=2)
  config.lr.base = 1e30  # Diverges within a few steps.
  config.optimizer.name = 'sgd'
  config.grad_clip_norm = 0.0
  with pytest.raises(FloatingPointError, match=r'at step \d+'):
    train.train_and_evaluate(config, str(tmp_path))
  steps = sorted(int(s) for s in os.listdir(tmp_path / 'checkpoints') if s.isdigit())
  assert steps == [] or max(steps) < 8
  # The run's log file says why it stopped, with the traceback.
  log = (tmp_path / 'train.0.log').read_text()
  assert 'The job stopped with an error:' in log
  assert 'Traceback' in log and 'FloatingPointError: Loss is' in log


@pytest.mark.slow
@pytest.mark.parametrize('overrides,match', [
    (dict(dataset='no_such_dataset'), 'Unknown dataset'),
    (dict(train_split='validation'), 'Unknown split'),
    (dict(batch_size=30, accum_steps=4), 'not divisible by accum_steps'),
    (dict(pretrained_path='/nonexistent/model.npz'), 'pretrained_path not found'),
])
def test_bad_configs_fail_before_compute(tmp_path, data_overrides, overrides, match):
  config = make_config(data_overrides, **overrides)
  with pytest.raises((ValueError, FileNotFoundError), match=match):
    train.train_and_evaluate(config, str(tmp_path))
  assert not os.path.exists(tmp_path / 'checkpoints')


@pytest.mark.slow
def test_pretrained_file_that_does_not_fit_is_rejected(tmp_path, data_overrides):
  bad = tmp_path / 'bad.npz'
  checkpoint.save({'embedding': {'kernel': np.zeros((8, 8, 3, 16), np.float32)}}, bad)
  config = make_config(data_overrides, pretrained_path=str(bad))
  with pytest.raises(checkpoint.CheckpointError, match=r'embedding/kernel: checkpoint'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run' / 'checkpoints')


@pytest.mark.slow
def test_unknown_config_field_on_the_command_line(tmp_path, data_overrides):
  args = [sys.executable, '-m', 'vit_jax.main',
          f'--config={os.path.join(REPO, "tests", "tiny_config.py")}', f'--workdir={tmp_path}',
          '--config.no_such_field=3']
  env = {**os.environ, 'PYTHONPATH': REPO}
  result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert 'no_such_field' in result.stderr


def test_weight_ema_resumes_exactly_and_is_the_average(tmp_path, data_overrides):
  straight, killed = tmp_path / 'straight', tmp_path / 'killed'
  extra = ['--config.ema_decay=0.9', '--config.model.transformer.dropout_rate=0.']
  run_main(straight, data_overrides, extra)
  run_main(killed, data_overrides, extra, kill_after_checkpoint=4)
  run_main(killed, data_overrides, extra)
  for name in ('model.npz', 'model_ema.npz'):
    a = checkpoint.flatten(checkpoint.load(straight / name))
    b = checkpoint.flatten(checkpoint.load(killed / name))
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=f'{name} {key}')
  # --config.ema_decay alone: the evaluator reports the EMA beside the raw weights.
  log = (straight / 'train.0.log').read_text()
  assert 'test/ema_accuracy' in log and 'test/accuracy' in log


def test_weight_ema_follows_its_definition(data_overrides):
  config = make_config(data_overrides, batch_size=8, ema_decay=0.75)
  config.model.transformer.dropout_rate = 0.0
  state, step = state_and_step(config, 10)
  expected = jax.tree.map(lambda x: np.asarray(x, np.float64), state.params)
  batch = {'image': jax.random.normal(jax.random.PRNGKey(1), (8, 32, 32, 3)),
           'label': jnp.arange(8) % 10}
  for _ in range(3):
    state, _ = step(state, batch)
    expected = jax.tree.map(lambda e, p: 0.75 * e + 0.25 * np.asarray(p, np.float64), expected,
                            state.params)
  for got, want in zip(jax.tree.leaves(state.ema_params), jax.tree.leaves(expected)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  assert any(np.abs(np.asarray(a) - b).max() > 1e-5
             for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(expected)))


def test_fewshot_probe_runs_during_training(tmp_path, data_overrides):
  extra = ['--config.evals.probe.every=12', '--config.evals.probe.shots=(1,5)',
           '--config.evals.probe.train_split=train[:200]',
           '--config.evals.probe.test_split=test[:30]']
  out = run_main(tmp_path, data_overrides, extra, evals='probe:fewshot')
  log = (tmp_path / 'train.0.log').read_text()
  assert 'probe/1shot' in log and 'probe/5shot' in log and 'test/accuracy' in log
  assert 'probe/1shot=' in out
