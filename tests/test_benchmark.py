"""scripts/benchmark.py (over vit_jax.benchmarking) on a tiny zoo model: the tables it writes,
its FLOP count, its imports."""

import os
import re
import subprocess
import sys

import ml_collections
import pytest

from vit_jax.benchmarking import flops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_analytic_vit_flops_of_the_paper_models():
  """ViT-B/16 at 224: 17.6 GFLOPs in multiply-adds (DeiT's table), i.e. 35.1 GFLOPs."""
  config = ml_collections.ConfigDict(dict(
      patches={'size': (16, 16)}, hidden_size=768, classifier='token',
      representation_size=None, transformer={'mlp_dim': 3072, 'num_layers': 12}))
  count = flops.vit_forward_flops(config, 1000, 224)
  assert abs(count / 2 / 1e9 - 17.6) < 0.05
  assert flops.vit_forward_flops(ml_collections.ConfigDict({'embed_dim': 96}), 1000,
                                 224) is None  # Not a ViT: no analytic count.


def test_peak_table_matches_device_kinds():
  class Device:
    platform, device_kind = 'gpu', 'NVIDIA H100 80GB HBM3'
  assert flops.peak_flops(Device()) == 989e12
  Device.device_kind = 'NVIDIA H100 PCIe'
  assert flops.peak_flops(Device()) == 756e12
  Device.platform, Device.device_kind = 'cpu', 'cpu'
  assert flops.peak_flops(Device()) is None


@pytest.mark.slow
def test_benchmark_writes_its_tables_without_tensorflow_or_torch(tmp_path):
  output = tmp_path / 'bench.md'
  code = (
      'import runpy, sys\n'
      'import vit_jax.benchmarking.memory, vit_jax.benchmarking.resume\n'
      'import vit_jax.benchmarking.timm_side\n'
      'bench = runpy.run_path("scripts/benchmark.py", run_name="benchmark")\n'
      f'bench["run"](bench["parse_args"](["--models=ViT-CIFAR_4", "--resolution=32", '
      f'"--batch=2", "--iterations=2", "--warmup=1", "--attention-cost", '
      f'"--attention-batch=1", "--output={output}"]))\n'
      'print("IMPORTED", [m for m in ("tensorflow", "torch") if m in sys.modules])\n')
  run = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                       timeout=600, env={**os.environ, 'PYTHONPATH': ROOT})
  assert run.returncode == 0, run.stderr[-3000:]
  assert 'IMPORTED []' in run.stdout
  text = output.read_text()
  assert text in run.stdout.replace('IMPORTED []\n', '')
  assert 'Train step: vit_jax.training.step.make_train_step' in text
  row = next(line for line in text.splitlines() if line.startswith('| ViT-CIFAR_4 |'))
  cells = [c.strip() for c in row.strip('|').split('|')]
  analytic, xla = (float(v) for v in cells[2].split(' / '))
  assert abs(xla - analytic) / analytic < 0.1  # XLA also counts norms, softmax, GELU.
  infer_rate, train_rate = float(cells[5]), float(cells[6])
  assert infer_rate > train_rate > 0
  ratio = re.search(r'theoretical FLOPs (\d+)x', text).group(1)
  assert ratio == '64'  # 3136 tokens / 49 per window.


@pytest.mark.slow
def test_memory_report_shows_fsdp_at_an_eighth_of_dp_on_8_devices():
  run = subprocess.run(
      [sys.executable, 'scripts/benchmark.py', '--models=ViT-Ti_16', '--resolution=32',
       '--batch=8', '--memory'], cwd=ROOT, capture_output=True, text=True, timeout=600,
      env={**os.environ, 'PYTHONPATH': ROOT,
           'XLA_FLAGS': '--xla_force_host_platform_device_count=8'})
  assert run.returncode == 0, run.stderr[-3000:]
  rows = {cells[1]: cells for cells in (
      [c.strip() for c in line.strip('|').split('|')] for line in run.stdout.splitlines()
      if line.startswith('| ViT-Ti_16 |'))}
  params_dp = float(rows['data parallel'][2].replace(',', ''))
  # ViT-Ti/16 at 32 px (5 tokens) with 1000 classes: 5,717,416 - 192 * 192 = 5,680,552 float32
  # parameters, all on every device under DP; the table rounds to whole MiB.
  assert abs(params_dp - 5_680_552 * 4 / 2**20) <= 0.5
  ratio = float(rows['FSDP / DP'][4])
  assert 0.12 < ratio < 0.14  # 1/8, plus the small tensors FSDP leaves replicated.


@pytest.mark.slow
def test_resume_pipeline_times_the_first_batch_at_0_and_90_percent():
  env = {k: v for k, v in os.environ.items() if k != 'TFDS_DATA_DIR'}  # The folder alone.
  run = subprocess.run(
      [sys.executable, 'scripts/benchmark.py', '--models=', '--resume-pipeline',
       '--resume-examples=300', '--batch=16', '--iterations=1'], cwd=ROOT, capture_output=True,
      text=True, timeout=600, env={**env, 'PYTHONPATH': ROOT})
  assert run.returncode == 0, run.stderr[-3000:]
  rows = [[c.strip() for c in line.strip('|').split('|')] for line in run.stdout.splitlines()
          if line.startswith('| image folder')]
  assert [r[2:5] for r in rows] == [['0%', '0', '0'], ['90%', '16', '256']]  # 18 steps/epoch.
  assert all(float(r[6]) > 0 for r in rows)



def test_job_loop_rates_a_short_job_its_step_alone_and_its_pipeline(data_overrides):
  import tensorflow as tf
  import tiny_config
  from vit_jax.benchmarking import job_loop
  from vit_jax.training import base_config
  config = tiny_config.for_data(data_overrides)
  config.evals.probe = base_config.evaluator('fewshot')
  quick = job_loop.quick_config(config, steps=3)
  assert (quick.total_steps, quick.log_every, quick.export_npz) == (6, 3, False)
  assert quick.evals.test.every > 6 and quick.checkpoint_every > 6
  assert list(quick.evals) == ['test']  # No few-shot probes.
  assert quick.evals.test.split == config.evals.test.split  # Already a slice.
  config.evals.test.split = 'test'
  assert job_loop.quick_config(config, 3).evals.test.split == 'test[:64]'  # One eval batch.
  # The step-alone run's stream is its first batch over and over.
  stream = job_loop.one_batch_repeated(
      lambda: tf.data.Dataset.range(10).batch(2))().as_numpy_iterator()
  assert [next(stream).tolist() for _ in range(3)] == [[0, 1]] * 3
  rates = job_loop.rates(config, steps=3)
  assert list(rates) == ['job', 'step alone', 'pipeline alone']
  assert all(rate > 0 for rate in rates.values()), rates


def test_preprocess_rates_the_finetuning_pipeline_on_imagenet_size_jpegs(tmp_path):
  from PIL import Image
  from vit_jax.benchmarking import preprocess_speed
  kib = preprocess_speed.write_jpeg_folder(str(tmp_path), 6, num_classes=2)
  files = sorted((tmp_path / 'train').glob('*/*.jpg'))
  assert len(files) == 6
  assert {Image.open(f).size for f in files} == {(w, h) for h, w in preprocess_speed.SHAPES}
  assert 30 < kib < 400  # Photo-like: ImageNet's JPEGs average about 110 KiB.
  rate = preprocess_speed.images_per_s(1, str(tmp_path), 64, preprocess_speed.PP_FINETUNE,
                                       batch=4, batches=2)
  assert rate > 0


@pytest.mark.slow
def test_job_loop_and_preprocess_flags_write_their_tables():
  """The README's `--job-loop=CONFIG --preprocess` command line, on the tiny config (real
  CIFAR-10 only: a config file names its data) and a few generated JPEGs."""
  from helpers import cifar_dir
  data = cifar_dir()
  args = ['--models=', '--preprocess', '--preprocess-images=8', '--preprocess-size=64',
          '--batch=4', '--iterations=2']
  if data:
    args += ['--job-loop=tests/tiny_config.py', '--job-steps=2']
  env = {**os.environ, 'PYTHONPATH': ROOT, **({'TFDS_DATA_DIR': data} if data else {})}
  run = subprocess.run([sys.executable, 'scripts/benchmark.py', *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=600, env=env)
  assert run.returncode == 0, run.stderr[-3000:]
  rows = [[c.strip() for c in line.strip('|').split('|')] for line in run.stdout.splitlines()
          if line.startswith('| ') and not line.startswith('| cores') and
          not line.startswith('| measured')]
  per_core = [r for r in rows if r[0] in ('1', '2')]
  assert per_core and all(float(r[1]) > 0 for r in per_core)
  assert per_core[0][1] == per_core[0][2]  # On one core, img/s is img/s per core.
  if data:
    assert 'The job `tests/tiny_config.py` (ViT-CIFAR_4, cifar10, batch 32' in run.stdout
    loop = {r[0]: float(r[1]) for r in rows if r[0].startswith('the ')}
    assert len(loop) == 3 and all(v > 0 for v in loop.values())
