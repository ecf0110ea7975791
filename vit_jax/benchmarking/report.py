"""The benchmark's markdown: the machine line and the tables of models and attention."""

from __future__ import annotations

import os
import platform
import sys
from typing import Any, Sequence

import jax


def fmt(value: float | None, spec: str = '.1f') -> str:
  """`value` formatted by `spec`, or an en dash where there is none."""
  return '–' if value is None else format(value, spec)


def mib(value: int | None) -> str:
  """Bytes as whole MiB with thousands separators, or an en dash."""
  return '–' if value is None else f'{value / 2**20:,.0f}'


def machine_description() -> str:
  """Devices, CPU cores, versions; torch's threads and OpenMP policy where torch is loaded."""
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


def models_table(results: Sequence[dict[str, Any]], peak: float | None) -> list[str]:
  """One row per model: parameters, FLOPs, compile times, memory, throughput and MFU.

  `results`: dicts with name, params (count), inference and training (`timing.Measurement`)
  and analytic (forward FLOPs per image or None); `peak`: the chip's FLOP/s or None.
  """
  lines = ['| model | params (M) | GFLOPs/img fwd (analytic / XLA) | compile s (infer / train) '
           '| peak MiB (infer / train) | infer img/s | train img/s | MFU infer / train |',
           '|---|---:|---:|---:|---:|---:|---:|---:|']
  for row in results:
    inf, tr = row['inference'], row['training']
    flops = row['analytic'] or inf.xla_flops_per_image
    if peak and flops:
      # A train step is forward + backward: 3 forward passes' worth of FLOPs.
      mfu = f'{inf.images_per_s * flops / peak:.1%} / {tr.images_per_s * 3 * flops / peak:.1%}'
    else:
      mfu = '–'
    lines.append(
        f"| {row['name']} | {row['params'] / 1e6:.1f} | "
        f"{fmt(row['analytic'] and row['analytic'] / 1e9, '.3g')} / "
        f"{fmt(inf.xla_flops_per_image and inf.xla_flops_per_image / 1e9, '.3g')} | "
        f'{inf.compile_s:.1f} / {tr.compile_s:.1f} | '
        f'{mib(inf.peak_bytes)} / {mib(tr.peak_bytes)} | '
        f'{inf.images_per_s:.1f} | {tr.images_per_s:.1f} | {mfu} |')
  return lines


def timm_table(results: Sequence[dict[str, Any]]) -> list[str]:
  """Ours against timm (`row['timm']`: its inference and train images/second) per model."""
  lines = ['| model | ours infer img/s | timm infer img/s | ours / timm | ours train img/s | '
           'timm train img/s | ours / timm |', '|---|---:|---:|---:|---:|---:|---:|']
  for row in results:
    timm_inf, timm_train = row['timm']
    ours_inf, ours_train = row['inference'].images_per_s, row['training'].images_per_s
    lines.append(f"| {row['name']} | {ours_inf:.1f} | {timm_inf:.1f} | "
                 f'{ours_inf / timm_inf:.2f} | {ours_train:.1f} | {timm_train:.1f} | '
                 f'{ours_train / timm_train:.2f} |')
  return lines


def attention_table(rows: Sequence[dict[str, Any]], batch: int, dtype: str) -> list[str]:
  """The global and windowed rows of `timing.attention_cost`, with their ratios."""
  glob, win = rows
  lines = [f'Attention on a 56x56 token grid (3136 tokens), batch {batch}, '
           f'3 heads x 32 dims, {dtype}; windowed: 7x7 windows (Swin-T stage 1).', '',
           '| attention | ms | matmul GFLOPs | XLA GFLOPs | peak MiB |', '|---|---:|---:|---:|---:|']
  for row in rows:
    lines.append(f"| {row['name']} | {row['seconds'] * 1e3:.1f} | "
                 f"{row['matmul_flops'] / 1e9:.2f} | "
                 f"{fmt(row['xla_flops'] and row['xla_flops'] / 1e9, '.2f')} | "
                 f"{mib(row['peak_bytes'])} |")
  xla_ratio = (glob['xla_flops'] / win['xla_flops']
               if glob['xla_flops'] and win['xla_flops'] else None)
  lines += ['', f"Global / windowed: time {glob['seconds'] / win['seconds']:.1f}x, theoretical "
            f"FLOPs {glob['matmul_flops'] / win['matmul_flops']:.0f}x (= 3136 / 49), XLA FLOPs "
            f'{fmt(xla_ratio)}x.']
  return lines
