"""DeiT distillation: the loss against a hand computation, a frozen teacher inside the train
step, and distilled checkpoints (two prefix tokens) through save, load and resolution transfer."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from helpers import job_for, randomize, stepper
import tiny_config
from vit_jax import checkpoint
from vit_jax import models
from vit_jax.models import outputs
from vit_jax.training import base_config
from vit_jax.training import distill
from vit_jax.training import optim
from vit_jax.training import step as step_lib
from vit_jax.training import train

CLS = np.array([[2.0, -1.0, 0.5], [0.1, 0.2, 0.3]], np.float32)
DIST = np.array([[0.0, 1.0, -1.0], [1.5, -0.5, 0.0]], np.float32)
TEACHER = np.array([[0.3, 2.0, 0.1], [3.0, 1.0, -2.0]], np.float32)
TARGETS = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], np.float32)


def log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_hard_distillation_loss_by_hand():
  ce_cls = -(TARGETS * log_softmax(CLS)).sum(-1)  # [CE(row 0, class 0), CE(row 1, class 2)]
  teacher_labels = np.eye(3)[TEACHER.argmax(-1)]  # argmax: class 1, class 0
  ce_dist = -(teacher_labels * log_softmax(DIST)).sum(-1)
  expected = np.mean(0.5 * ce_cls + 0.5 * ce_dist)
  got = np.mean(distill.per_example_loss(CLS, DIST, TARGETS, TEACHER, kind='hard'))
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  # By hand: rows (0.2413 + 0.4076) / 2 and (1.0019 + 0.3064) / 2, averaged.
  np.testing.assert_allclose(got, 0.489304, rtol=1e-5)


def test_soft_distillation_loss_by_hand():
  t = 2.0
  p_teacher = np.exp(log_softmax(TEACHER / t))
  ce_cls = -(TARGETS * log_softmax(CLS)).sum(-1)
  # DeiT: kl_div(reduction='sum') * T^2 / outputs_kd.numel(), numel = batch x classes.
  soft = (p_teacher * (np.log(p_teacher) - log_softmax(DIST / t))).sum() * t**2 / DIST.size
  expected = 0.7 * np.mean(ce_cls) + 0.3 * soft
  got = np.mean(distill.per_example_loss(CLS, DIST, TARGETS, TEACHER, kind='soft', alpha=0.3,
                                         temperature=t))
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  try:  # DeiT's own expression (its DistillationLoss), where torch is installed.
    import torch  # pylint: disable=g-import-not-at-top
    import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  except ImportError:
    return
  deit = F.kl_div(F.log_softmax(torch.tensor(DIST) / t, dim=1),
                  F.log_softmax(torch.tensor(TEACHER) / t, dim=1),
                  reduction='sum', log_target=True) * (t * t) / DIST.size
  np.testing.assert_allclose(got, 0.7 * np.mean(ce_cls) + 0.3 * float(deit), rtol=1e-6)


def student(num_classes=10, **kw):
  return models.get_model('ViT-Ti_16', num_classes=num_classes, patches={'size': (8, 8)},
                          hidden_size=32, distilled=True,
                          transformer={'num_layers': 1, 'mlp_dim': 64, 'num_heads': 2}, **kw)


def test_distilled_model_heads():
  model = student()
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  params = randomize(model.init(jax.random.key(1), x)['params'])
  assert params['dist'].shape == (1, 1, 32) and 'head_dist' in params
  assert params['Transformer']['posembed_input']['pos_embedding'].shape == (1, 18, 32)
  # Reference: the encoder's class and distillation tokens, each through its head by hand.
  tokens = student(classifier='token_unpooled').apply({'params': params}, x)
  by_hand = {name: tokens[:, i] @ params[head]['kernel'] + params[head]['bias']
             for i, (name, head) in enumerate([(outputs.CLS_LOGITS, 'head'),
                                               (outputs.DIST_LOGITS, 'head_dist')])}
  for train in (True, False):  # One answer in both modes: the two heads' average (DeiT, timm).
    logits, named, _ = models.apply_with_outputs(model, {'params': params}, x, train=train)
    np.testing.assert_array_equal(model.apply({'params': params}, x, train=train), logits)
    np.testing.assert_allclose(logits, (by_hand['cls_logits'] + by_hand['dist_logits']) / 2,
                               atol=1e-6)
    for name, expected in by_hand.items():
      np.testing.assert_allclose(named[name], expected, atol=1e-6, err_msg=name)
    np.testing.assert_array_equal(named[outputs.FEATURES], tokens[:, 0])
  with pytest.raises(ValueError, match="distilled=True needs classifier 'token'"):
    student(classifier='gap').init(jax.random.key(1), x)


def test_teacher_is_frozen_and_used(tmp_path):
  config = tiny_config.get_config()
  config.model = {**config.model.to_dict(), 'distilled': True}
  config.batch_size = 8
  config.distillation = base_config.distillation(
      teacher_model='CNN-CIFAR', teacher_path=str(tmp_path / 'teacher.npz'), kind='hard')
  teacher_model = models.get_model('CNN-CIFAR', num_classes=10)
  x = jax.random.normal(jax.random.key(0), (8, 32, 32, 3))
  checkpoint.save(randomize(teacher_model.init(jax.random.key(2), x)['params'], scale=0.5),
                  config.distillation.teacher_path)
  teacher, teacher_variables = distill.load_teacher(config.distillation, 32, 10)
  before = jax.tree.map(np.array, teacher_variables)

  job = job_for(config, 10, teacher=teacher)
  state = job.init_state()
  assert 'dist' in state.params and not jax.tree.leaves(state.model_state)
  train_step = stepper(job)
  batch = {'image': x, 'label': jnp.arange(8) % 10}
  losses = []
  for _ in range(3):
    state, metrics = train_step(state, batch, teacher_variables)
    losses.append(float(metrics['loss']))
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(teacher_variables)):
    np.testing.assert_array_equal(a, b)
  # The teacher matters: another teacher gives another loss from the same state.
  other = jax.tree.map(lambda p: -p, teacher_variables)
  _, metrics_other = train_step(state, batch, other)
  _, metrics_same = train_step(state, batch, teacher_variables)
  assert float(metrics_other['loss']) != pytest.approx(float(metrics_same['loss']))


@pytest.mark.parametrize('kind', ['hard', 'soft'])
def test_distillation_accumulates_as_one_batch_with_skipped_images(kind):
  """Issue 28: the distillation loss too is divided by the whole batch's weight, not by each
  micro-batch's (rows 1 and 5 are the whole second micro-batch of 4)."""
  config = tiny_config.get_config()
  config.model = {**config.model.to_dict(), 'distilled': True}
  config.model['transformer']['dropout_rate'] = 0.
  config.update(batch_size=8, grad_clip_norm=0.)
  config.optimizer.name = 'sgd'
  config.lr.update(base=0.5, warmup_steps=0, decay_type='constant')
  config.distillation = base_config.distillation(teacher_model='CNN-CIFAR', kind=kind,
                                                 temperature=2.)
  x = jax.random.normal(jax.random.key(0), (8, 32, 32, 3))
  teacher = models.get_model('CNN-CIFAR', num_classes=10)
  teacher_variables = {'params': randomize(teacher.init(jax.random.key(2), x)['params'],
                                           scale=0.5)}
  batch = {'image': np.asarray(x), 'label': np.arange(8, dtype=np.int32) % 10,
           'mask': np.array([1, 0, 1, 1, 1, 0, 1, 0], np.float32)}
  params, losses = [], []
  for accum in (1, 4):
    config.accum_steps = accum
    job = job_for(config, 10, teacher=teacher)
    state, metrics = stepper(job)(job.init_state(), batch, teacher_variables)
    params.append(state.params)
    losses.append(float(metrics['loss']))
  for a, b in zip(jax.tree.leaves(params[0]), jax.tree.leaves(params[1])):
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
  assert losses[1] == pytest.approx(losses[0], rel=1e-5)


def test_the_step_pairs_a_distilled_student_with_a_teacher():
  config = tiny_config.get_config()
  config.distillation = ml_collections.ConfigDict(dict(teacher_model='CNN-CIFAR', kind='hard'))
  x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
  batch = {'image': x, 'label': jnp.arange(4)}
  teacher = models.get_model('CNN-CIFAR', num_classes=10)
  teacher_variables = teacher.init(jax.random.key(2), x)
  plain = step_lib.create_model(config, 10)
  tx, schedule = optim.make_optimizer(config, jax.eval_shape(
      lambda: plain.init(jax.random.PRNGKey(0), x))['params'])
  state = job_for(tiny_config.get_config(), 10).init_state()
  with pytest.raises(ValueError, match='needs a distilled student'):
    step_lib.make_train_step(plain, tx, schedule, config, teacher=teacher)(
        state, batch, teacher_variables)
  distilled = student()
  state = state.replace(params=distilled.init(jax.random.key(1), x)['params'])
  with pytest.raises(ValueError, match='A distilled model needs a teacher'):
    step_lib.make_train_step(distilled, tx, schedule, config)(state, batch)


def test_distilled_checkpoint_round_trip_and_resize(tmp_path):
  model = student()
  params = randomize(model.init(jax.random.key(1), jnp.zeros((1, 32, 32, 3)))['params'])
  path = tmp_path / 'deit.npz'
  checkpoint.save(params, path)
  restored = checkpoint.load(path)
  for key, value in checkpoint.flatten(params).items():
    np.testing.assert_array_equal(checkpoint.flatten(restored)[key], value, err_msg=key)

  bigger = student(num_classes=5)
  init = bigger.init(jax.random.key(0), jnp.zeros((1, 48, 48, 3)))['params']
  tuned = checkpoint.load_pretrained(pretrained_path=path, init_params=init, model_config={})
  old = np.asarray(params['Transformer']['posembed_input']['pos_embedding'])
  new = tuned['Transformer']['posembed_input']['pos_embedding']
  assert new.shape == (1, 2 + 36, 32)
  np.testing.assert_array_equal(new[:, :2], old[:, :2])  # cls and dist rows kept as they are.
  np.testing.assert_allclose(new, checkpoint.interpolate_posembed(old, (6, 6), num_prefix_tokens=2),
                             atol=1e-6)
  np.testing.assert_array_equal(tuned['dist'], params['dist'])
  assert tuned['head_dist']['kernel'].shape == (32, 5)


@pytest.mark.slow
def test_distillation_end_to_end(tmp_path, data_overrides):
  teacher_config = tiny_config.get_config(data_overrides['dataset'])
  teacher_config.update(data_overrides)
  teacher_config.update(model_name='CNN-CIFAR', total_steps=2, checkpoint_every=2)
  teacher_config.evals.test.update(split='test[:64]', every=2)
  teacher_config.model = ml_collections.ConfigDict()
  train.train_and_evaluate(teacher_config, str(tmp_path / 'teacher'))

  config = tiny_config.get_config(data_overrides['dataset'])
  config.update(data_overrides)
  config.update(total_steps=2, checkpoint_every=2)
  config.evals.test.update(split='test[:64]', every=2)
  config.model = {**config.model.to_dict(), 'distilled': True}
  # Only the fields it changes: the settings complete the others (`base_config.distillation`).
  config.distillation = ml_collections.ConfigDict(dict(
      teacher_model='CNN-CIFAR', teacher_path=str(tmp_path / 'teacher' / 'model.npz')))
  metrics = train.train_and_evaluate(config, str(tmp_path / 'student'))
  assert metrics['step'] == 2 and 0 <= metrics['test/accuracy'] <= 1
  exported = checkpoint.load(tmp_path / 'student' / 'model.npz')
  assert 'dist' in exported and 'head_dist' in exported
  assert not any('teacher' in k for k in checkpoint.flatten(exported))
