r"""Throughput, compile time, memory and FLOPs of zoo models; optionally against timm.

  python scripts/benchmark.py --models=ViT-B_16 --batch=64 --resolution=224
  python scripts/benchmark.py --models=ViT-Ti_16,ViT-S_16 --batch=8 --compare-timm \
      --output=bench.md
  python scripts/benchmark.py --models= --attention-cost
  python scripts/benchmark.py --models= --resume-pipeline --batch=128

For each model: images/second of inference (`apply`, train=False) and of one training step (the
training loop's own step, `vit_jax.step.make_train_step`: forward, backward, SGD with momentum
0.9), XLA compile times, the
compiled programs' memory (XLA memory analysis: arguments + outputs + temporaries - aliased),
FLOPs per image from XLA's cost analysis and, for ViTs, counted analytically (2 per
multiply-add), and on GPUs and TPUs the model FLOPs utilisation against the chip's dense bf16
peak. `--compare-timm` runs the same architecture in timm (PyTorch) in the same process, same
batch, resolution and dtype, with a torch SGD step, and prints ours/timm ratios.
`--attention-cost` times global against windowed (Swin) attention on a 56x56 token grid.
`--resume-pipeline` times the training input pipeline's first batch when a run resumes at 0% and
at 90% of an epoch, on a generated folder of small PNGs and on CIFAR-10's train split (where
TFDS_DATA_DIR holds it).

Results go to stdout as markdown tables, and to `--output`. The script imports TensorFlow only
under `--resume-pipeline`, and torch (with timm) only under `--compare-timm`.

On a shared CPU, run with `OMP_WAIT_POLICY=PASSIVE`: torch's OpenMP threads otherwise spin at
every barrier while other processes hold the cores, which made timm 5x slower on a loaded
2-core machine (XLA's CPU thread pool is not affected).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

# Run from a checkout without installing: the package is one folder up.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from vit_jax import models  # pylint: disable=g-import-not-at-top,wrong-import-position

# Dense bf16 peak FLOP/s by device kind (vendor data sheets; SXM parts for NVIDIA). Matched by
# substring against `jax.devices()[0].device_kind`, most specific first.
PEAK_BF16_FLOPS = (
    ('H100 PCIe', 756e12),
    ('H100', 989e12),
    ('H200', 989e12),
    ('GH200', 989e12),
    ('B200', 2250e12),
    ('A100', 312e12),
    ('L4', 121e12),
    ('A10G', 70e12),
    ('TPU v6 lite', 918e12),
    ('TPU v5 lite', 197e12),
    ('TPU v5p', 459e12),
    ('TPU v5', 459e12),
    ('TPU v4', 275e12),
    ('TPU v3', 123e12),
)


def peak_flops(device: jax.Device) -> float | None:
  """The device's dense bf16 peak, or None (CPUs, unknown chips)."""
  if device.platform == 'cpu':
    return None
  for name, flops in PEAK_BF16_FLOPS:
    if name in device.device_kind:
      return flops
  return None


# ---------------------------------------------------------------------------------------------
# FLOPs.


def vit_forward_flops(config: Any, num_classes: int, resolution: int) -> float | None:
  """FLOPs of one ViT forward pass per image, 2 per multiply-add (matmuls and convs only).

  Per layer with N tokens of width D and MLP width M: QKV 3*2ND^2, attention logits and the
  weighted sum 2*2N^2D, output projection 2ND^2, MLP 2*2NDM. Plus the patch embedding and the
  head; norms, softmax and GELU are left out (they are O(ND), not O(ND^2)). Returns None for
  hybrids (the ResNet would need its own count) and non-ViT families.
  """
  if 'transformer' not in config or config.get('resnet') is not None:
    return None
  ph, pw = config.patches.size
  grid = (resolution // ph) * (resolution // pw)
  tokens = grid + (1 if config.classifier == 'token' else 0)
  width, mlp = config.hidden_size, config.transformer.mlp_dim
  per_layer = (2 * tokens * width * 3 * width + 2 * 2 * tokens * tokens * width +
               2 * tokens * width * width + 2 * 2 * tokens * width * mlp)
  embedding = 2 * grid * ph * pw * 3 * width
  representation = config.get('representation_size') or 0
  head = 2 * (representation or width) * num_classes + 2 * width * representation
  return float(embedding + config.transformer.num_layers * per_layer + head)


def _xla_flops(compiled: Any) -> float | None:
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # Older jax: one dict per computation.
    analysis = analysis[0] if analysis else None
  return float(analysis['flops']) if analysis and 'flops' in analysis else None


def _peak_bytes(compiled: Any) -> int | None:
  """Arguments + outputs + temporaries - aliased (donated) bytes of a compiled program."""
  memory = compiled.memory_analysis()
  if memory is None:
    return None
  return int(memory.argument_size_in_bytes + memory.output_size_in_bytes +
             memory.temp_size_in_bytes - memory.alias_size_in_bytes)


# ---------------------------------------------------------------------------------------------
# Timing.


@dataclasses.dataclass
class Measurement:
  """One compiled program's numbers."""
  compile_s: float
  images_per_s: float
  peak_bytes: int | None
  xla_flops_per_image: float | None


def _time_calls(call: Callable[[], Any], iterations: int, warmup: int) -> float:
  """Seconds per call, median over `iterations` timed calls after `warmup` untimed ones."""
  for _ in range(warmup):
    jax.block_until_ready(call())
  times = []
  for _ in range(iterations):
    start = time.perf_counter()
    jax.block_until_ready(call())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def measure_inference(model: Any, params: Any, images: jax.Array, iterations: int,
                      warmup: int) -> Measurement:
  fn = jax.jit(lambda p, x: model.apply({'params': p}, x, train=False))
  start = time.perf_counter()
  compiled = fn.lower(params, images).compile()
  compile_s = time.perf_counter() - start
  seconds = _time_calls(lambda: compiled(params, images), iterations, warmup)
  batch = images.shape[0]
  flops = _xla_flops(compiled)
  return Measurement(compile_s, batch / seconds, _peak_bytes(compiled),
                     flops / batch if flops else None)


def _train_step(model: Any, learning_rate: float = 0.01) -> tuple[Callable, Any, str]:
  """(step function, optimizer, description): the training loop's step, SGD momentum 0.9."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from vit_jax import step as step_lib  # pylint: disable=g-import-not-at-top
  tx = optax.sgd(learning_rate, momentum=0.9)
  config = ml_collections.ConfigDict({'accum_steps': 1, 'label_smoothing': 0.})
  step = step_lib.make_train_step(model, tx, optax.constant_schedule(learning_rate), config)
  return step, tx, 'vit_jax.step.make_train_step with optax SGD, momentum 0.9'


def measure_train(model: Any, params: Any, images: jax.Array, labels: jax.Array,
                  iterations: int, warmup: int) -> tuple[Measurement, str]:
  from vit_jax import step as step_lib  # pylint: disable=g-import-not-at-top
  step, tx, description = _train_step(model)
  state = step_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                           opt_state=tx.init(params), model_state={},
                           rng=jax.random.key_data(jax.random.key(0)))
  batch = {'image': images, 'label': labels}
  fn = jax.jit(step, donate_argnums=(0,))
  start = time.perf_counter()
  compiled = fn.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  holder = [state]

  def call():
    holder[0], metrics = compiled(holder[0], batch)
    return metrics['loss']

  seconds = _time_calls(call, iterations, warmup)
  n = images.shape[0]
  flops = _xla_flops(compiled)
  return Measurement(compile_s, n / seconds, _peak_bytes(compiled),
                     flops / n if flops else None), description


# ---------------------------------------------------------------------------------------------
# timm.


def _timm_model(name: str, resolution: int, num_classes: int) -> Any:
  from vit_jax import parity  # pylint: disable=g-import-not-at-top
  config = models.MODEL_CONFIGS[name].to_dict()
  family = models.MODEL_FAMILIES[name]
  if family == 'swin':
    return parity.timm_swin({**config, 'num_classes': num_classes})
  if family != 'vit':
    raise ValueError(f'--compare-timm covers ViT, hybrid and Swin models, not {name}')
  return parity.timm_vit({**config, 'num_classes': num_classes}, image_size=resolution,
                         gelu_approximate=config['transformer'].get('gelu_approximate', True))


def measure_timm(name: str, batch: int, resolution: int, num_classes: int, dtype: str,
                 iterations: int, warmup: int,
                 threads: int | None = None) -> tuple[float, float]:
  """(inference, train step) images/second of the timm model, on the device torch sees."""
  import torch  # pylint: disable=g-import-not-at-top
  if threads:
    torch.set_num_threads(threads)
  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  model = _timm_model(name, resolution, num_classes).to(device)
  images = torch.randn(batch, 3, resolution, resolution, device=device)
  labels = torch.randint(0, num_classes, (batch,), device=device)
  autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == 'bfloat16')

  def timed(call):
    for _ in range(warmup):
      call()
    times = []
    for _ in range(iterations):
      if device == 'cuda':
        torch.cuda.synchronize()
      start = time.perf_counter()
      call()
      if device == 'cuda':
        torch.cuda.synchronize()
      times.append(time.perf_counter() - start)
    return batch / statistics.median(times)

  model.eval()

  def infer():
    with torch.no_grad(), autocast:
      return model(images)

  inference = timed(infer)
  model.train()
  optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

  def train_step():
    optimizer.zero_grad(set_to_none=True)
    with autocast:
      loss = torch.nn.functional.cross_entropy(model(images).float(), labels)
    loss.backward()
    optimizer.step()

  return inference, timed(train_step)


# ---------------------------------------------------------------------------------------------
# Global versus windowed attention.


def _attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """Plain softmax attention over (..., tokens, head_dim), the same XLA ops for both cases."""
  logits = jnp.einsum('...qd,...kd->...qk', q, k) / np.sqrt(q.shape[-1]).astype(q.dtype)
  return jnp.einsum('...qk,...kd->...qd', jax.nn.softmax(logits, axis=-1), v)


def attention_cost(batch: int, grid: int = 56, window: int = 7, heads: int = 3,
                   head_dim: int = 32, dtype: Any = jnp.float32, iterations: int = 5,
                   warmup: int = 2) -> list[dict[str, Any]]:
  """Times global and windowed attention over a grid x grid token map (Swin-T's first stage).

  The theoretical ratio counts the two matmuls (logits and weighted sum): global attention
  costs 4 N^2 d per head, windowed 4 N M d with M = window^2 tokens per window, a ratio N / M.
  """
  tokens, per_window = grid * grid, window * window
  keys = jax.random.split(jax.random.key(0), 3)
  shape = (batch, heads, tokens, head_dim)
  q, k, v = (jax.random.normal(key, shape, dtype) for key in keys)

  def windows(x):  # (B, H, N, d) -> (B, H, windows, M, d), grid-aligned windows.
    x = x.reshape(batch, heads, grid // window, window, grid // window, window, head_dim)
    return x.transpose(0, 1, 2, 4, 3, 5, 6).reshape(batch, heads, -1, per_window, head_dim)

  rows = []
  for name, fn in (('global', jax.jit(_attention)),
                   ('windowed', jax.jit(lambda q, k, v: _attention(windows(q), windows(k),
                                                                   windows(v))))):
    compiled = fn.lower(q, k, v).compile()
    seconds = _time_calls(lambda c=compiled: c(q, k, v), iterations, warmup)
    rows.append(dict(name=name, seconds=seconds, xla_flops=_xla_flops(compiled),
                     matmul_flops=4. * batch * heads * tokens * (
                         tokens if name == 'global' else per_window) * head_dim,
                     peak_bytes=_peak_bytes(compiled)))
  return rows


# ---------------------------------------------------------------------------------------------
# Resuming the input pipeline.


def write_png_folder(root: str, num_examples: int, size: int = 32, num_classes: int = 10,
                     split: str = 'train') -> str:
  """Writes `num_examples` size x size PNGs to ROOT/<split>/<class>/ (an image folder)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  # A few hundred distinct images suffice: the pipeline never compares them.
  pool = [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
          for _ in range(256)]
  for label in range(num_classes):
    os.makedirs(os.path.join(root, split, f'class_{label}'), exist_ok=True)
  for i in range(num_examples):
    pool[i % len(pool)].save(os.path.join(root, split, f'class_{i % num_classes}', f'{i}.png'),
                             compress_level=1)
  return root


def time_resume(config: Any, split: str, batch: int, fractions: Sequence[float],
                repeats: int) -> list[dict[str, Any]]:
  """Seconds to the first batch of `train_dataset` resumed at each fraction of an epoch.

  Each timing builds the source and the dataset afresh, as a restarted job does; the source's
  set-up (listing files, opening TFDS) is timed apart from the first batch. One untimed run
  first takes TensorFlow's one-off start-up costs, and the fractions alternate, so that neither
  is favoured by the page cache or a busy machine.
  """
  from vit_jax import input_pipeline  # pylint: disable=g-import-not-at-top

  def once(fraction):
    start = time.perf_counter()
    source = input_pipeline.get_source(config, split)
    setup = time.perf_counter()
    start_step = round(fraction * (source.num_examples // batch))
    next(iter(input_pipeline.train_dataset(config, source, batch, start_step)))
    return source.num_examples, start_step, setup - start, time.perf_counter() - setup

  once(fractions[0])
  times = {f: [] for f in fractions}
  for _ in range(repeats):
    for fraction in fractions:
      times[fraction].append(once(fraction))
  rows = []
  for fraction, runs in times.items():
    examples, start_step = runs[0][:2]
    rows.append(dict(fraction=fraction, start_step=start_step, offset=start_step * batch,
                     examples=examples, setup_s=statistics.median(r[2] for r in runs),
                     first_batch_s=statistics.median(r[3] for r in runs)))
  return rows


def resume_pipeline_table(args: argparse.Namespace) -> str:
  """The markdown table of `--resume-pipeline`."""
  import tempfile  # pylint: disable=g-import-not-at-top
  from vit_jax import base_config  # pylint: disable=g-import-not-at-top

  def config_for(**fields):
    config = base_config.get_config()
    config.update(image_size=32, pp_train='random_crop(pad=4)|flip_lr|value_range(-1, 1)',
                  download=False, **fields)
    return config

  fractions = (0., 0.9)
  repeats = max(1, min(args.iterations, 3))
  datasets = []
  data_dir = os.environ.get('TFDS_DATA_DIR')
  if data_dir and os.path.isdir(os.path.join(data_dir, 'cifar10')):
    # The default buffer holds the whole split; a smaller one shows the cost of the records a
    # resume reads (and parses, but does not decode) to rebuild the buffer's state.
    for buffer in (50_000, 10_000):
      datasets.append((f'CIFAR-10 train (TFDS, encoded PNG records), shuffle buffer {buffer:,}',
                       config_for(dataset='cifar10', data_dir=data_dir, shuffle_buffer=buffer),
                       'train'))
  with tempfile.TemporaryDirectory() as root:
    print(f'[resume] writing {args.resume_examples} PNGs ...', file=sys.stderr, flush=True)
    start = time.perf_counter()
    write_png_folder(root, args.resume_examples)
    written = time.perf_counter() - start
    datasets.append((f'image folder, {args.resume_examples:,} 32x32 PNG files (written in '
                     f'{written:.0f} s), whole-split shuffle of paths',
                     config_for(dataset='imagefolder', data_dir=root), 'train'))
    out = [f'Time to the first training batch when resuming, batch {args.batch}, 32x32 '
           f"images, pp 'random_crop(pad=4)|flip_lr|value_range(-1, 1)'; median of {repeats} "
           'after one untimed run, each with the source and the dataset built afresh.', '',
           '| data | examples | resume at | start_step | offset | source set-up s | '
           'first batch s |', '|---|---:|---:|---:|---:|---:|---:|']
    for name, config, split in datasets:
      print(f'[resume] {name} ...', file=sys.stderr, flush=True)
      for row in time_resume(config, split, args.batch, fractions, repeats):
        out.append(f"| {name} | {row['examples']:,} | {row['fraction']:.0%} | "
                   f"{row['start_step']} | {row['offset']:,} | {row['setup_s']:.2f} | "
                   f"{row['first_batch_s']:.2f} |")
  return '\n'.join(out)


# ---------------------------------------------------------------------------------------------
# Reporting.


def _fmt(value: float | None, spec: str = '.1f') -> str:
  return '–' if value is None else format(value, spec)


def _mib(value: int | None) -> str:
  return '–' if value is None else f'{value / 2**20:,.0f}'


def machine_description() -> str:
  device = jax.devices()[0]
  cpu = platform.processor() or platform.machine()
  parts = [f'{len(jax.devices())} x {device.device_kind} ({device.platform})',
           f'{os.cpu_count()} CPU cores ({cpu})', f'jax {jax.__version__}',
           f'jaxlib {jax.lib.__version__}' if hasattr(jax.lib, '__version__') else '',
           f'Python {platform.python_version()}']
  if 'torch' in sys.modules:
    torch = sys.modules['torch']
    policy = os.environ.get('OMP_WAIT_POLICY', 'default')
    parts.append(f'torch {torch.__version__} ({torch.get_num_threads()} threads, '
                 f'OMP_WAIT_POLICY {policy})')
    if 'timm' in sys.modules:
      parts.append(f'timm {sys.modules["timm"].__version__}')
  return ', '.join(p for p in parts if p)


def run(args: argparse.Namespace) -> str:
  lines = []

  def emit(line=''):
    print(line, flush=True)
    lines.append(line)

  dtype = args.dtype
  device = jax.devices()[0]
  peak = peak_flops(device)
  names = [n for n in args.models.split(',') if n]
  for name in names:
    models.model_class(name)  # Fails early, naming the known models.
  if args.memory:
    names = []  # Memory only: timings on simulated devices would mean nothing.
  results = []
  train_description = ''
  for name in names:
    print(f'[{name}] building ...', file=sys.stderr, flush=True)
    model = models.get_model(name, num_classes=args.num_classes, dtype=dtype)
    rng = jax.random.key(0)
    images = jax.random.normal(rng, (args.batch, args.resolution, args.resolution, 3))
    labels = jax.random.randint(rng, (args.batch,), 0, args.num_classes)
    params = jax.jit(lambda x, m=model: m.init(jax.random.key(1), x, train=False)['params'])(
        images[:1])
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    print(f'[{name}] inference ...', file=sys.stderr, flush=True)
    inference = measure_inference(model, params, images, args.iterations, args.warmup)
    print(f'[{name}] train step ...', file=sys.stderr, flush=True)
    training, train_description = measure_train(model, params, images, labels,
                                                args.iterations, args.warmup)
    del params
    analytic = vit_forward_flops(models.MODEL_CONFIGS[name], args.num_classes,
                                 args.resolution)
    row = dict(name=name, params=count, inference=inference, training=training,
               analytic=analytic)
    if args.compare_timm:
      print(f'[{name}] timm ...', file=sys.stderr, flush=True)
      row['timm'] = measure_timm(name, args.batch, args.resolution, args.num_classes, dtype,
                                 args.iterations, args.warmup, args.torch_threads)
    results.append(row)

  emit(f'Machine: {machine_description()}')
  if names:  # The other modes state their own settings.
    emit(f'Settings: batch {args.batch}, {args.resolution}x{args.resolution}, {dtype}, '
         f'{args.num_classes} classes; median of {args.iterations} timed calls after '
         f'{args.warmup} warm-up calls. Train step: {train_description or "–"}.')
  emit()
  if results:
    emit('| model | params (M) | GFLOPs/img fwd (analytic / XLA) | compile s (infer / train) '
         '| peak MiB (infer / train) | infer img/s | train img/s | MFU infer / train |')
    emit('|---|---:|---:|---:|---:|---:|---:|---:|')
    for row in results:
      inf, tr = row['inference'], row['training']
      flops = row['analytic'] or inf.xla_flops_per_image
      if peak and flops:
        # A train step is forward + backward: 3 forward passes' worth of FLOPs.
        mfu = f'{inf.images_per_s * flops / peak:.1%} / {tr.images_per_s * 3 * flops / peak:.1%}'
      else:
        mfu = '–'
      emit(f"| {row['name']} | {row['params'] / 1e6:.1f} | "
           f"{_fmt(row['analytic'] and row['analytic'] / 1e9, '.3g')} / "
           f"{_fmt(inf.xla_flops_per_image and inf.xla_flops_per_image / 1e9, '.3g')} | "
           f'{inf.compile_s:.1f} / {tr.compile_s:.1f} | '
           f'{_mib(inf.peak_bytes)} / {_mib(tr.peak_bytes)} | '
           f'{inf.images_per_s:.1f} | {tr.images_per_s:.1f} | {mfu} |')
    if args.compare_timm:
      emit()
      emit('| model | ours infer img/s | timm infer img/s | ours / timm | ours train img/s | '
           'timm train img/s | ours / timm |')
      emit('|---|---:|---:|---:|---:|---:|---:|')
      for row in results:
        timm_inf, timm_train = row['timm']
        ours_inf, ours_train = row['inference'].images_per_s, row['training'].images_per_s
        emit(f"| {row['name']} | {ours_inf:.1f} | {timm_inf:.1f} | {ours_inf / timm_inf:.2f} | "
             f'{ours_train:.1f} | {timm_train:.1f} | {ours_train / timm_train:.2f} |')

  if args.attention_cost:
    print('[attention] global vs windowed ...', file=sys.stderr, flush=True)
    rows = attention_cost(args.attention_batch, dtype=jnp.dtype(dtype),
                          iterations=args.iterations, warmup=args.warmup)
    glob, win = rows
    emit()
    emit(f'Attention on a 56x56 token grid (3136 tokens), batch {args.attention_batch}, '
         f'3 heads x 32 dims, {dtype}; windowed: 7x7 windows (Swin-T stage 1).')
    emit()
    emit('| attention | ms | matmul GFLOPs | XLA GFLOPs | peak MiB |')
    emit('|---|---:|---:|---:|---:|')
    for row in rows:
      emit(f"| {row['name']} | {row['seconds'] * 1e3:.1f} | {row['matmul_flops'] / 1e9:.2f} | "
           f"{_fmt(row['xla_flops'] and row['xla_flops'] / 1e9, '.2f')} | "
           f"{_mib(row['peak_bytes'])} |")
    emit()
    xla_ratio = (glob['xla_flops'] / win['xla_flops']
                 if glob['xla_flops'] and win['xla_flops'] else None)
    emit(f"Global / windowed: time {glob['seconds'] / win['seconds']:.1f}x, theoretical FLOPs "
         f"{glob['matmul_flops'] / win['matmul_flops']:.0f}x (= 3136 / 49), XLA FLOPs "
         f'{_fmt(xla_ratio)}x.')
  if args.memory:
    emit()
    emit(memory_table(args))
  if args.resume_pipeline:
    emit()
    emit(resume_pipeline_table(args))
  text = '\n'.join(lines) + '\n'
  if args.output:
    with open(args.output, 'w', encoding='utf-8') as f:
      f.write(text)
  return text


def memory_table(args: argparse.Namespace) -> str:
  """Per-device bytes of the Adam train step, data parallel vs FSDP over all devices.

  Parameters and optimizer state are counted from their shardings; arguments, outputs and
  temporaries come from XLA's compiled memory analysis (`vit_jax.step.memory_analysis`). Run
  with `XLA_FLAGS=--xla_force_host_platform_device_count=8` to see 8 devices on a CPU.
  """
  from vit_jax import base_config  # pylint: disable=g-import-not-at-top
  from vit_jax import sharding  # pylint: disable=g-import-not-at-top
  from vit_jax import step as step_lib  # pylint: disable=g-import-not-at-top
  mesh = sharding.make_mesh((('data', -1),))
  out = [f'Per-device memory of the Adam train step, batch {args.batch}, {args.resolution} px, '
         f'{args.dtype}, {mesh.size} devices ({jax.devices()[0].platform}); MiB.', '',
         '| model | layout | params | optimizer state | params + optimizer | XLA arguments | '
         'XLA temporaries |', '|---|---|---:|---:|---:|---:|---:|']
  for name in [m for m in args.models.split(',') if m]:
    totals = {}
    for layout, rules in (('data parallel', ()), ('FSDP', (('.*', 'fsdp'),))):
      config = base_config.get_config()
      config.model_name = name
      config.model = {'dtype': args.dtype}
      config.image_size = args.resolution
      config.batch_size = args.batch
      config.optimizer.name = 'adam'
      config.sharding_rules = rules
      print(f'[memory] {name} {layout} ...', file=sys.stderr, flush=True)
      stats = step_lib.memory_analysis(config, args.num_classes, mesh)
      totals[layout] = stats['params_bytes'] + stats['opt_state_bytes']
      out.append(f"| {name} | {layout} | {_mib(stats['params_bytes'])} | "
                 f"{_mib(stats['opt_state_bytes'])} | {_mib(totals[layout])} | "
                 f"{_mib(stats['argument_bytes'])} | {_mib(stats['temp_bytes'])} |")
    out.append(f"| {name} | FSDP / DP | | | {totals['FSDP'] / totals['data parallel']:.3f} | | |")
  return '\n'.join(out)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--models', default='ViT-B_16',
                      help='Comma-separated zoo names (empty: none, e.g. with --attention-cost).')
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--resolution', type=int, default=224)
  parser.add_argument('--num-classes', type=int, default=1000)
  parser.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'],
                      help='Compute dtype (parameters stay float32).')
  parser.add_argument('--iterations', type=int, default=10, help='Timed calls per measurement.')
  parser.add_argument('--warmup', type=int, default=2, help='Untimed calls before timing.')
  parser.add_argument('--compare-timm', action='store_true',
                      help='Also run the model in timm (needs torch and timm).')
  parser.add_argument('--torch-threads', type=int, default=None,
                      help="torch's intra-op threads under --compare-timm (default: torch's).")
  parser.add_argument('--memory', action='store_true',
                      help='Per-device train-step memory, data parallel vs FSDP (no run).')
  parser.add_argument('--attention-cost', action='store_true',
                      help='Time global vs windowed attention on a 56x56 token grid.')
  parser.add_argument('--attention-batch', type=int, default=4)
  parser.add_argument('--resume-pipeline', action='store_true',
                      help='Time the first training batch when resuming at 0%% and 90%% of an '
                           'epoch (imports TensorFlow).')
  parser.add_argument('--resume-examples', type=int, default=50_000,
                      help='PNG files in the generated image folder of --resume-pipeline.')
  parser.add_argument('--output', default=None, help='Also write the tables to this file.')
  args = parser.parse_args(argv)
  for field in ('batch', 'resolution', 'iterations', 'attention_batch', 'resume_examples'):
    if getattr(args, field) < 1:
      parser.error(f'--{field.replace("_", "-")} must be positive')
  return args


if __name__ == '__main__':
  run(parse_args())
