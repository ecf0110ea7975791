r"""Throughput, compile time, memory and FLOPs of zoo models; optionally against timm.

  python scripts/benchmark.py --models=ViT-B_16 --batch=64 --resolution=224
  python scripts/benchmark.py --models=ViT-Ti_16,ViT-S_16 --batch=8 --compare-timm \
      --output=bench.md
  python scripts/benchmark.py --models= --attention-cost
  python scripts/benchmark.py --models= --resume-pipeline --batch=128
  python scripts/benchmark.py --models= --job-loop=configs/cifar10_scratch.py:quick
  python scripts/benchmark.py --models= --preprocess --batch=32
  python scripts/benchmark.py --models= --checkpoint-io=/tmp/ckpt --checkpoint-io=gs://B/ckpt

For each model: images/second of inference (`apply`, train=False) and of one training step (the
training loop's own step, `vit_jax.training.step.make_train_step`: forward, backward, SGD with momentum
0.9), XLA compile times, the
compiled programs' memory (XLA memory analysis: arguments + outputs + temporaries - aliased),
FLOPs per image from XLA's cost analysis and, for ViTs, counted analytically (2 per
multiply-add), and on GPUs and TPUs the model FLOPs utilisation against the chip's dense bf16
peak. `--compare-timm` runs the same architecture in timm (PyTorch) in the same process, same
batch, resolution and dtype, with a torch SGD step, and prints ours/timm ratios.
`--attention-cost` times global against windowed (Swin) attention on a 56x56 token grid.
`--resume-pipeline` times the training input pipeline's first batch when a run resumes at 0% and
at 90% of an epoch, on a generated folder of small PNGs and on CIFAR-10's train split (where
TFDS_DATA_DIR holds it). `--job-loop` runs a training job's loop against its step alone (one
cached batch) and its input pipeline alone, to show whether the input throttles the step. `--preprocess` measures the fine-tuning input
pipeline (decode, Inception crop, resize, flip) in images/s per CPU core on generated JPEGs of
ImageNet's sizes, to size the host that feeds an accelerator. `--checkpoint-io` saves and
restores a training checkpoint of ViT-B/16's train state through Orbax in each directory given
(local or a bucket), to choose `checkpoint_every`.

Results go to stdout as markdown tables, and to `--output`. The script imports TensorFlow only
under `--resume-pipeline`, `--job-loop` and `--preprocess`, and torch (with timm) only under `--compare-timm`. The measurements
live in `vit_jax.benchmarking` (flops, timing, memory, timm_side, resume, report); this file is
their command line.

On a shared CPU, run with `OMP_WAIT_POLICY=PASSIVE`: torch's OpenMP threads otherwise spin at
every barrier while other processes hold the cores, which made timm 5x slower on a loaded
2-core machine (XLA's CPU thread pool is not affected).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

# Run from a checkout without installing: the package is one folder up.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from vit_jax.benchmarking.suite import run  # pylint: disable=g-import-not-at-top,wrong-import-position


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
  parser.add_argument('--job-loop', default=None, metavar='CONFIG',
                      help='Images/s of the training job CONFIG (configs/FILE.py:ARGS) against '
                           'its step alone and its input pipeline alone (imports TensorFlow).')
  parser.add_argument('--job-steps', type=int, default=50,
                      help='Timed steps (after as many untimed ones) of --job-loop.')
  parser.add_argument('--preprocess', action='store_true',
                      help='Images/s per core of the fine-tuning input pipeline on generated '
                           'ImageNet-size JPEGs, at --preprocess-size (imports TensorFlow).')
  parser.add_argument('--preprocess-size', type=int, default=384)
  parser.add_argument('--preprocess-images', type=int, default=512,
                      help='JPEG files in the generated image folder of --preprocess.')
  parser.add_argument('--checkpoint-io', action='append', default=[], metavar='DIR',
                      help='Seconds and bytes of a checkpoint save and restore of the train '
                           'state (parameters + AdamW moments) in DIR, local or gs://...; '
                           'repeatable (vit_jax.benchmarking.checkpoint_io).')
  parser.add_argument('--checkpoint-model', default='ViT-B_16',
                      help='Zoo model whose train state --checkpoint-io saves.')
  parser.add_argument('--checkpoint-repeats', type=int, default=3,
                      help='Saves and restores per directory of --checkpoint-io.')
  parser.add_argument('--output', default=None, help='Also write the tables to this file '
                      '(local or gs://...).')
  args = parser.parse_args(argv)
  for field in ('batch', 'resolution', 'iterations', 'attention_batch', 'resume_examples',
                'job_steps', 'preprocess_size', 'preprocess_images', 'checkpoint_repeats'):
    if getattr(args, field) < 1:
      parser.error(f'--{field.replace("_", "-")} must be positive')
  return args


if __name__ == '__main__':
  run(parse_args())
