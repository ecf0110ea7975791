"""The benchmark run behind `scripts/benchmark.py`: measures what its flags ask, writes tables."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import models
from vit_jax.checkpoint import paths
from vit_jax.benchmarking import checkpoint_io
from vit_jax.benchmarking import flops as flops_lib
from vit_jax.benchmarking import job_loop
from vit_jax.benchmarking import memory
from vit_jax.benchmarking import preprocess_speed
from vit_jax.benchmarking import report
from vit_jax.benchmarking import resume
from vit_jax.benchmarking import timing
from vit_jax.benchmarking import timm_side


def _log(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


def measure_model(name: str, args: argparse.Namespace) -> tuple[dict[str, Any], str]:
  """Zoo model `name` at `args`' batch, resolution and dtype: (table row, train-step text)."""
  _log(f'[{name}] building ...')
  model = models.get_model(name, num_classes=args.num_classes, dtype=args.dtype)
  rng = jax.random.key(0)
  images = jax.random.normal(rng, (args.batch, args.resolution, args.resolution, 3))
  labels = jax.random.randint(rng, (args.batch,), 0, args.num_classes)
  params = jax.jit(lambda x: model.init(jax.random.key(1), x, train=False)['params'])(images[:1])
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  _log(f'[{name}] inference ...')
  inference = timing.measure_inference(model, params, images, args.iterations, args.warmup)
  _log(f'[{name}] train step ...')
  training, description = timing.measure_train(model, params, images, labels, args.iterations,
                                               args.warmup)
  del params
  analytic = flops_lib.vit_forward_flops(models.MODEL_CONFIGS[name], args.num_classes,
                                         args.resolution)
  row = dict(name=name, params=count, inference=inference, training=training,
             analytic=analytic)
  if args.compare_timm:
    _log(f'[{name}] timm ...')
    row['timm'] = timm_side.measure_timm(name, args.batch, args.resolution, args.num_classes,
                                         args.dtype, args.iterations, args.warmup,
                                         args.torch_threads)
  return row, description


def run(args: argparse.Namespace) -> str:
  """Runs the benchmarks `args` (see `scripts/benchmark.py`) asks for; returns the markdown,
  printed as it goes and also written to `args.output` where given."""
  lines = []

  def emit(*new_lines: str) -> None:
    for line in new_lines or ('',):
      print(line, flush=True)
      lines.append(line)

  names = [n for n in args.models.split(',') if n]
  for name in names:
    models.model_class(name)  # Fails early, naming the known models.
  timed_names = [] if args.memory else names  # Timings on simulated devices would mean nothing.
  results, train_description = [], ''
  for name in timed_names:
    row, train_description = measure_model(name, args)
    results.append(row)

  emit(f'Machine: {report.machine_description()}')
  if timed_names:  # The other modes state their own settings.
    emit(f'Settings: batch {args.batch}, {args.resolution}x{args.resolution}, {args.dtype}, '
         f'{args.num_classes} classes; median of {args.iterations} timed calls after '
         f'{args.warmup} warm-up calls. Train step: {train_description or "–"}.')
  emit()
  if results:
    emit(*report.models_table(results, flops_lib.peak_flops(jax.devices()[0])))
    if args.compare_timm:
      emit()
      emit(*report.timm_table(results))
  if args.attention_cost:
    _log('[attention] global vs windowed ...')
    rows = timing.attention_cost(args.attention_batch, dtype=jnp.dtype(args.dtype),
                                 iterations=args.iterations, warmup=args.warmup)
    emit()
    emit(*report.attention_table(rows, args.attention_batch, args.dtype))
  if args.memory:
    emit()
    emit(memory.memory_table(names, args.batch, args.resolution, args.dtype, args.num_classes))
  if args.resume_pipeline:
    emit()
    emit(resume.resume_pipeline_table(args.batch, args.iterations, args.resume_examples))
  if args.job_loop:
    emit()
    emit(job_loop.job_loop_table(args.job_loop, args.job_steps))
  if args.preprocess:
    emit()
    emit(preprocess_speed.preprocess_table(args.preprocess_images, args.preprocess_size,
                                           args.batch, args.iterations))
  if args.checkpoint_io:
    _log(f'[checkpoint] {args.checkpoint_model} train state ...')
    state = checkpoint_io.train_state(args.checkpoint_model)
    results = {d: checkpoint_io.measure(d, state, args.checkpoint_repeats)
               for d in args.checkpoint_io}
    emit()
    emit(checkpoint_io.table(results, checkpoint_io.state_bytes(state), args.checkpoint_model))
  text = '\n'.join(lines) + '\n'
  if args.output:
    paths.write_text(args.output, text)
  return text
