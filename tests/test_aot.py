"""Ahead-of-time compilation for targets that are not attached (vit_jax.aot).

The compile tests need libtpu (extra `tpu`) or the CUDA plugin (extra `cuda`) and skip without
them; .ci/run installs both into a second environment and runs this file there with
JAX_PLATFORMS=cpu. The parsing, HLO-reading and padded-attention tests run everywhere.
"""

import importlib.util
import io
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import load_config
import tiny_config
from vit_jax import models
from vit_jax.aot import compile_job
from vit_jax.aot import fit as fit_lib
from vit_jax.aot import hlo
from vit_jax.aot import targets
from vit_jax.models import layers
from vit_jax.training import base_config
from vit_jax.training import distill

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _has(module):
  try:
    return importlib.util.find_spec(module) is not None
  except ModuleNotFoundError:
    return False


needs_tpu = pytest.mark.skipif(not _has('libtpu'), reason='libtpu absent: pip install -e ".[tpu]"')
needs_cuda = pytest.mark.skipif(not _has('jax_plugins.xla_cuda12'),
                                reason='CUDA plugin absent: pip install -e ".[cuda]"')


def tiny(**overrides):
  """The tests' 1-layer ViT, no dropout (cuDNN's fused kernel has none), with overrides."""
  config = tiny_config.get_config()
  config.model.transformer.dropout_rate = 0.
  config.batch_size = 64
  return fit_lib.apply(config, overrides)


# -- Everywhere --------------------------------------------------------------------------------

def test_target_names_count_cores_or_chips_as_cloud_does():
  assert targets.parse('v4-32') == targets.Target('v4-32', 'tpu', 'v4', 16, 1)
  assert targets.parse('v5p-128').num_devices == 64
  assert targets.parse('v5e-8').num_devices == 8
  assert targets.parse('v5e-256x2').num_devices == 512
  assert targets.parse('h100-8x4') == targets.Target('h100-8x4', 'gpu', 'h100', 8, 4)
  assert targets.gpu_memory_bytes('h200') > targets.gpu_memory_bytes('h100')
  for bad in ('v4-3', 'v5e-12', 'tpu-8', 'h100'):
    with pytest.raises(ValueError):
      targets.parse(bad)


def test_a_missing_extra_names_the_install_command(monkeypatch):
  monkeypatch.setattr(importlib.util, 'find_spec', lambda name: None)
  with pytest.raises(targets.MissingExtraError, match=r'pip install -e "\.\[tpu\]"'):
    targets.devices(targets.parse('v5e-8'))
  with pytest.raises(targets.MissingExtraError, match=r'pip install -e "\.\[cuda\]"'):
    targets.devices(targets.parse('h100-8'))


HLO = """HloModule jit_train_step

%body.1 (p: (s32[], f32[1024])) -> (s32[], f32[1024]) {
  %ar = f32[1024]{0} all-reduce(%x), channel_id=1, to_apply=%add
  %inner = (s32[], f32[8]) while(%t), condition=%cond.2, body=%body.2, backend_config={"known_trip_count":{"n":"12"}}
}

%body.2 (p: (s32[], f32[8])) -> (s32[], f32[8]) {
  %ag = (bf16[4], bf16[32], u32[], u32[]) all-gather-start(%y), channel_id=2
}

%cond.1 (p: (s32[], f32[1024])) -> pred[] {
  %c = s32[] constant(4)
  ROOT %lt = pred[] compare(%i, %c), direction=LT
}

ENTRY %main (a: f32[1024]) -> f32[1024] {
  %w = (s32[], f32[1024]) while(%t), condition=%cond.1, body=%body.1
  %rs = f32[256]{0} reduce-scatter(%a), channel_id=3, to_apply=%add
  %fa = (bf16[2,4,8,8]{3,2,1,0}, u8[0]{0}) custom-call(%q, %k, %v), custom_call_target="__cudnn$fmhaSoftmax"
  %fb = (bf16[2,4,8,8]{3,2,1,0}, u8[0]{0}) custom-call(%q, %k, %v), custom_call_target="__cudnn$fmhaSoftmaxBackward"
}
"""


def test_hlo_reader_counts_collectives_in_and_out_of_the_accumulation_loop():
  found = hlo.analyze(HLO, accum_steps=4)
  c = found['collectives']
  # The all-reduce runs once per micro-batch, the all-gather 12 times in each.
  assert c['all-reduce'] == {'ops': 1, 'ops_in_accumulation_loop': 1, 'runs_per_step': 4,
                             'bytes_per_step': 4 * 4096}
  assert c['all-gather'] == {'ops': 1, 'ops_in_accumulation_loop': 1, 'runs_per_step': 48,
                             'bytes_per_step': 48 * 64}
  assert c['reduce-scatter'] == {'ops': 1, 'ops_in_accumulation_loop': 0, 'runs_per_step': 1,
                                 'bytes_per_step': 1024}
  assert found['fused_attention_kernels'] == {'forward': 1, 'backward': 1, 'total': 2}
  assert found['while_loops'] == [4, 12]
  # Without accumulation the same loop is not the accumulation loop.
  assert hlo.analyze(HLO)['collectives']['all-reduce']['ops_in_accumulation_loop'] == 0


@pytest.mark.parametrize('tokens', [197, 5])
def test_padded_attention_equals_unpadded_values_and_gradients(tokens):
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.standard_normal((2, tokens, 3, 16)), jnp.float32) for _ in range(3))

  def loss(fn, q, k, v):
    return jnp.sum(jnp.sin(fn(q, k, v)))

  def plain(q, k, v):
    return jax.nn.dot_product_attention(q, k, v, implementation='xla')

  def padded(q, k, v):
    return layers.padded_attention(q, k, v, implementation='xla')

  def grads(fn):
    return jax.jit(jax.grad(lambda *x: loss(fn, *x), argnums=(0, 1, 2)))(q, k, v)

  np.testing.assert_allclose(jax.jit(padded)(q, k, v), plain(q, k, v), rtol=1e-5, atol=1e-6)
  for a, b in zip(grads(padded), grads(plain)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_cudnn_is_chosen_only_where_its_constraints_hold():
  bf16 = jnp.zeros((2, 197, 12, 64), jnp.bfloat16)
  assert layers.cudnn_refusal(bf16, bf16, None, None, 'gpu') is None
  assert 'bfloat16' in layers.cudnn_refusal(bf16.astype(jnp.float32), bf16, None, None, 'gpu')
  assert 'head dimension' in layers.cudnn_refusal(bf16[..., :60], bf16, None, None, 'gpu')
  assert layers.cudnn_refusal(bf16, bf16, jnp.zeros((1, 12, 197, 197)), None, 'gpu')
  assert layers.cudnn_refusal(bf16, bf16, None, None, 'tpu')


def _variant_of(config):
  """(accum_steps, remat, fsdp) of a config `fit` compiles."""
  return (config.accum_steps, bool(config.model.transformer.remat),
          tuple(config.sharding_rules) == fit_lib.FSDP_RULES)


@pytest.mark.parametrize('seed', range(40))
def test_fit_returns_the_first_variant_in_its_order_whose_steps_fit(seed, monkeypatch):
  """Against every variant's verdict, for memory that no formula predicts: XLA's temporaries
  can grow with accumulation and shrink with FSDP. Compiles are stood in for by a table."""
  rng = np.random.default_rng(seed)
  usable, state = 100, int(rng.integers(20, 160))
  accums, kinds = (1, 2, 4, 8), [(r, f) for r in (False, True) for f in (False, True)]
  totals = {(a, r, f): (state // 4 if f else state) + int(rng.integers(0, 120))
            for a in accums for r, f in kinds}
  eval_fits = {kind: bool(rng.random() < 0.8) for kind in kinds}
  compiled = []

  def compile_for_target(config, target_name, **kwargs):
    variant = _variant_of(config)
    compiled.append(variant)
    total = totals[variant]
    fsdp_state = state // 4 if variant[2] else state
    return compile_job.Report(
        target=target_name, devices=4, device_kind='fake', device_memory_bytes=usable,
        usable_memory_bytes=usable, fits=total <= usable,
        per_device_bytes={'params': fsdp_state // 3, 'optimizer': fsdp_state - fsdp_state // 3,
                          'temporaries': total - fsdp_state, 'total': total},
        oom_message=None if total <= usable else 'too big', flops_per_step=None,
        model_flops_per_step=None, estimated_step_seconds=None, estimated_mfu=None,
        estimate_note=None, collectives={}, fused_attention_kernels={}, while_loops=[],
        compile_seconds=0., eval_step=None, config={}, **{k: v for k, v in kwargs.items()
                                                           if k == 'attention'})

  def eval_and_flops(config, target_name):
    return {'fits': eval_fits[_variant_of(config)[1:]], 'total': 1, 'oom_message': None}, 1.

  monkeypatch.setattr(compile_job, 'compile_for_target', compile_for_target)
  monkeypatch.setattr(compile_job, 'eval_and_flops', eval_and_flops)
  monkeypatch.setattr(targets, 'devices', lambda target: jax.devices('cpu')[:1])
  report = fit_lib.fit(tiny(batch_size=8), 'v5e-4', max_compiles=100, log=open(os.devnull, 'w'))
  fitting = [(a, r, f) for a in accums for r, f in kinds
             if totals[(a, r, f)] <= usable and eval_fits[(r, f)]]
  if not fitting:
    assert not report.fits and 'Cannot fit' in report.oom_message
    return
  assert report.fits and _variant_of(fit_lib.apply(tiny(batch_size=8), report.overrides)) == (
      fitting[0])
  assert compiled[-1] == fitting[0] and len(compiled) == len(set(compiled))


# -- With the extras ---------------------------------------------------------------------------

@needs_tpu
def test_cli_report_for_a_tpu_slice(tmp_path):
  out = tmp_path / 'report.json'
  run = subprocess.run(
      [sys.executable, '-m', 'vit_jax.aot', f'--config={REPO}/tests/tiny_config.py',
       '--target=v5e-8', '--config.batch_size=64', f'--json={out}'],
      capture_output=True, text=True, timeout=600, cwd=REPO,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert run.returncode == 0, run.stderr[-3000:]
  assert 'fits: True' in run.stdout
  report = json.loads(out.read_text())
  assert report['target'] == 'v5e-8' and report['devices'] == 8
  assert report['device_kind'] == 'TPU v5 lite'
  assert report['device_memory_bytes'] == 16 * 2**30
  assert report['fits'] is True and report['oom_message'] is None
  b = report['per_device_bytes']
  assert 0 < b['params'] < b['optimizer'] < b['total'] < 2**30
  # One optimizer step of 64 images: XLA's count and the analytic matmul count agree roughly.
  assert 0.8 < report['flops_per_step'] / report['model_flops_per_step'] < 1.5
  assert report['estimated_step_seconds'] > 0 and 0 < report['estimated_mfu'] <= 1
  assert report['collectives']['all-reduce']['ops'] >= 1
  assert report['fused_attention_kernels']['total'] == 0
  # Skipped images are mirrored within each device's rows: no image crosses devices.
  assert 'collective-permute' not in report['collectives']
  assert report['eval_step']['fits'] is True and report['compile_seconds'] > 0


@needs_tpu
def test_a_distillation_step_compiles_with_its_teacher():
  """DeiT's step runs the frozen teacher too: built from the zoo, its variables abstract."""
  config = load_config('deit.py', 'cifar10')
  config.eval_batch_size = 512  # The recipe's 500 does not split over 8 chips.
  report = compile_job.compile_for_target(config, 'v5e-8', with_eval=False)
  teacher, shapes = distill.abstract_teacher(config.distillation, config.image_size, 10)
  assert isinstance(teacher, models.model_class('CNN-CIFAR'))
  # The teacher's variables are arguments of the step, replicated on every chip.
  assert report.per_device_bytes['teacher'] == sum(
      x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes)) > 0
  assert report.fits and report.flops_per_step > report.model_flops_per_step


@needs_cuda
def test_fit_finds_a_variant_for_a_batch_that_does_not_fit(monkeypatch):
  # A GPU step fits what JAX preallocates (XLA_PYTHON_CLIENT_MEM_FRACTION of the memory); a
  # small fraction makes the tiny model's batch too large without a big compile.
  usable = 230 * 2**20
  monkeypatch.setenv('XLA_PYTHON_CLIENT_MEM_FRACTION',
                     str(usable / targets.gpu_memory_bytes('h100')))
  config = tiny(batch_size=4096)
  report = compile_job.compile_for_target(config, 'h100-1', with_eval=False, count_flops=False)
  assert not report.fits and 'preallocates' in report.oom_message
  assert report.per_device_bytes['total'] > usable
  fitted = fit_lib.fit(config, 'h100-1', with_eval=False)
  assert fitted.fits and fitted.oom_message is None and fitted.overrides
  assert fitted.per_device_bytes['total'] <= usable
  assert fitted.config['accum_steps'] == fitted.overrides.get('accum_steps', 1)


def small_vit(**overrides):
  """The tests' ViT with ViT-S's blocks (width 384, 6 heads, MLP 1536), 4 of them."""
  config = tiny()
  config.model.hidden_size = 384
  config.model.transformer.update(num_layers=4, mlp_dim=1536, num_heads=6)
  return fit_lib.apply(config, overrides)


@needs_tpu
def test_fit_takes_fsdp_where_it_shards_the_temporaries_too(monkeypatch):
  """A v5e-4 with 30 MiB per chip (the budget patched in): the replicated step does not fit,
  the FSDP one does, with fewer temporaries than the replicated one. `fit` used to predict
  FSDP from the replicated temporaries, skip it and return a costlier variant."""
  budget = 30 * 2**20
  monkeypatch.setattr(targets, 'usable_memory_bytes', lambda target: budget)
  config = small_vit()
  replicated = compile_job.compile_for_target(config, 'v5e-4', with_eval=False,
                                              count_flops=False)
  b = replicated.per_device_bytes
  state = b['params'] + b['optimizer']
  assert not replicated.fits and state / 4 + b['total'] - state > 1.05 * budget
  fitted = fit_lib.fit(config, 'v5e-4', with_eval=False)
  assert fitted.fits and fitted.overrides == {'sharding_rules': fit_lib.FSDP_RULES}
  assert fitted.per_device_bytes['total'] <= budget
  assert fitted.per_device_bytes['total'] - fitted.per_device_bytes['params'] - (
      fitted.per_device_bytes['optimizer']) < b['total'] - state


@needs_tpu
def test_a_job_fits_only_when_its_eval_step_fits_too(monkeypatch):
  monkeypatch.setattr(targets, 'usable_memory_bytes', lambda target: 30 * 2**20)
  config = small_vit(sharding_rules=fit_lib.FSDP_RULES, eval_batch_size=4096)
  report = compile_job.compile_for_target(config, 'v5e-4', count_flops=False)
  assert report.eval_step['fits'] is False and report.per_device_bytes['total'] <= 30 * 2**20
  assert not report.fits and 'the eval step does not' in report.oom_message
  fitted = fit_lib.fit(config, 'v5e-4')
  assert not fitted.fits and 'eval step (eval_batch_size=4096) did not fit' in (
      fitted.oom_message)


@needs_tpu
def test_fit_says_when_fewer_accumulation_steps_than_configured_fit():
  report = fit_lib.fit(tiny(accum_steps=4), 'v5e-8', with_eval=False)
  assert report.fits and report.overrides == {} and report.config['accum_steps'] == 4
  assert report.smaller_accum_steps == 1


def tiny_resnet(**overrides):
  """A BatchNorm ResNet of one basic unit of width 8 on 32 px images, batch 64."""
  config = base_config.get_config()
  config.update(model_name='ResNet-18', image_size=32, batch_size=64, eval_batch_size=64,
                num_classes=10)
  config.model = {'num_layers': (1,), 'width': 8}
  return fit_lib.apply(base_config.with_model_fields(config), overrides)


@needs_tpu
def test_fit_and_the_report_say_batchnorm_is_not_one_batch_under_accumulation():
  """Issue 28: accumulation normalises each micro-batch by its own statistics (ghost batch
  norm); `--fit` must say so where it keeps accum_steps > 1 for a BatchNorm model."""
  log = io.StringIO()
  report = fit_lib.fit(tiny_resnet(accum_steps=2), 'v5e-8', with_eval=False, log=log)
  assert report.fits and report.config['accum_steps'] == 2
  assert len(report.accumulation_caveats) == 1
  assert 'ResNet-18 has BatchNorm' in report.accumulation_caveats[0]
  assert 'ghost batch norm' in report.accumulation_caveats[0]
  assert '[fit] caveat: ResNet-18 has BatchNorm' in log.getvalue()
  assert 'caveat: ResNet-18 has BatchNorm' in compile_job.format_report(report)
  # One batch, or no BatchNorm: nothing to say.
  for config in (tiny_resnet(), tiny(accum_steps=2)):
    quiet = compile_job.compile_for_target(config, 'v5e-8', with_eval=False, count_flops=False)
    assert quiet.fits and quiet.accumulation_caveats == []
    assert 'caveat' not in compile_job.format_report(quiet)


@needs_cuda
@pytest.mark.parametrize('dtype,fused', [('bfloat16', True), ('float32', False)])
def test_gpu_node_uses_cudnn_flash_attention_in_bfloat16_only(dtype, fused):
  report = compile_job.compile_for_target(tiny(**{'model.dtype': dtype}), 'h100-8',
                                          count_flops=False)
  assert report.fits and report.device_kind == 'NVIDIA H100 80GB HBM3'
  kernels = report.fused_attention_kernels
  assert (kernels['forward'] >= 1 and kernels['backward'] >= 1) == fused
  assert (report.eval_step['fused_attention_kernels']['forward'] >= 1) == fused
  assert kernels['total'] == 0 or fused
  assert report.estimated_step_seconds is None and 'GPU' in report.estimate_note


@needs_cuda
def test_attention_dropout_keeps_the_train_step_off_cudnn_and_the_eval_step_on_it():
  """cuDNN's kernel has no dropout: training with attention dropout takes the einsum path."""
  config = tiny(**{'model.dtype': 'bfloat16', 'model.transformer.attention_dropout_rate': 0.1})
  report = compile_job.compile_for_target(config, 'h100-8', count_flops=False)
  assert report.fits and report.fused_attention_kernels['total'] == 0
  assert report.eval_step['fused_attention_kernels']['forward'] >= 1


@pytest.mark.parametrize('target', [pytest.param('v5e-8', marks=needs_tpu),
                                    pytest.param('h100-8', marks=needs_cuda)])
def test_accumulated_gradients_are_reduced_once_per_step_not_per_micro_batch(target):
  """Issue 28: the TPU and GPU compilers move the gradients out of the accumulation loop, so a
  step reduces the same bytes at accum_steps 1 and 4 (the CPU backend does not: README)."""
  reports = {accum: compile_job.compile_for_target(tiny(accum_steps=accum), target,
                                                   with_eval=False, count_flops=False)
             for accum in (1, 4)}
  gradient_bytes = reports[4].per_device_bytes['params']  # Replicated: one whole gradient.
  assert reports[4].while_loops == [4]
  one, four = (reports[a].collectives['all-reduce']['bytes_per_step'] for a in (1, 4))
  # One gradient's worth per step plus scalar metrics, where reducing in the loop moved four.
  assert gradient_bytes <= one <= four < one + 1024


@needs_cuda
def test_fsdp_all_gathers_parameters_and_reduce_scatters_gradients():
  report = compile_job.compile_for_target(tiny(sharding_rules=(('.*', 'fsdp:data:1'),)),
                                          'h100-8', with_eval=False, count_flops=False)
  assert report.collectives['all-gather']['ops'] >= 1
  assert report.collectives['reduce-scatter']['ops'] >= 1


FAKE_BIG_VISION_VIT = '''
"""Stands in for big_vision's models/vit.py: our ViT under its factory's signature."""
from big_vision import utils  # Stubbed by the script, as the real file's imports are.
from big_vision.models import common
import flax.linen as nn
from vit_jax import models


class _Wrapped(nn.Module):
  inner: nn.Module

  def __call__(self, image, *, train=False):
    return self.inner(image, train=train), {}


def Model(num_classes=None, *, variant=None, depth=None, dropout=0., dtype_mm='float32', **kw):
  size, patch = variant.split('/')
  transformer = {'dropout_rate': dropout, **({'num_layers': depth} if depth else {})}
  return _Wrapped(models.get_model(f'ViT-{size}_{patch}', num_classes=num_classes, dtype=dtype_mm,
                                   representation_size=192, transformer=transformer))
'''


@needs_tpu
def test_compare_big_vision_compiles_both_sides_of_the_same_step(tmp_path):
  """With a stand-in that is our own model, both rows must count the same work."""
  fake = tmp_path / 'vit.py'
  fake.write_text(FAKE_BIG_VISION_VIT)
  out = tmp_path / 'side_by_side.json'
  run = subprocess.run(
      [sys.executable, 'scripts/compare_big_vision.py', f'--big_vision_vit={fake}',
       '--target=v5e-8', '--variant=Ti/16', '--depth=1', '--batch=64', '--image_size=32',
       f'--json={out}'], capture_output=True, text=True, timeout=600, cwd=REPO,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': REPO})
  assert run.returncode == 0, run.stderr[-3000:]
  assert 'ours / big_vision: temporaries' in run.stdout
  ours, theirs = json.loads(out.read_text())['rows']
  assert (ours['model'], theirs['model']) == ('vit_jax', 'big_vision')
  assert ours['params'] == theirs['params'] > 0
  assert ours['flops'] == pytest.approx(theirs['flops'], rel=1e-6)
  assert ours['temporaries_bytes'] > 0 and ours['bytes_accessed'] > 0
