"""Time to the first training batch when a run resumes at some fraction of an epoch.

The input pipeline (TensorFlow) is imported when a function runs, not with this module.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from typing import Any, Sequence

import ml_collections
import numpy as np

from vit_jax.training import base_config

PP_TRAIN = 'random_crop(pad=4)|flip_lr|value_range(-1, 1)'


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
  from vit_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top

  def once(fraction):
    start = time.perf_counter()
    source = input_pipeline.get_source(config.dataset, split, data_dir=config.data_dir)
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


def _config_for(**fields: Any) -> ml_collections.ConfigDict:
  config = base_config.get_config()
  config.update(image_size=32, pp_train=PP_TRAIN, download=False, **fields)
  return config


def resume_pipeline_table(batch: int, iterations: int, resume_examples: int) -> str:
  """The markdown table of `--resume-pipeline`: resuming at 0% and 90% of an epoch, on a
  generated image folder of `resume_examples` PNGs and on CIFAR-10 where TFDS_DATA_DIR has it."""
  fractions = (0., 0.9)
  repeats = max(1, min(iterations, 3))
  datasets = []
  data_dir = os.environ.get('TFDS_DATA_DIR')
  if data_dir and os.path.isdir(os.path.join(data_dir, 'cifar10')):
    # The default buffer holds the whole split; a smaller one shows the cost of the records a
    # resume reads (and parses, but does not decode) to rebuild the buffer's state.
    for buffer in (50_000, 10_000):
      datasets.append((f'CIFAR-10 train (TFDS, encoded PNG records), shuffle buffer {buffer:,}',
                       _config_for(dataset='cifar10', data_dir=data_dir, shuffle_buffer=buffer),
                       'train'))
  with tempfile.TemporaryDirectory() as root:
    print(f'[resume] writing {resume_examples} PNGs ...', file=sys.stderr, flush=True)
    start = time.perf_counter()
    write_png_folder(root, resume_examples)
    written = time.perf_counter() - start
    datasets.append((f'image folder, {resume_examples:,} 32x32 PNG files (written in '
                     f'{written:.0f} s), whole-split shuffle of paths',
                     _config_for(dataset='imagefolder', data_dir=root), 'train'))
    out = [f'Time to the first training batch when resuming, batch {batch}, 32x32 '
           f"images, pp '{PP_TRAIN}'; median of {repeats} "
           'after one untimed run, each with the source and the dataset built afresh.', '',
           '| data | examples | resume at | start_step | offset | source set-up s | '
           'first batch s |', '|---|---:|---:|---:|---:|---:|---:|']
    for name, config, split in datasets:
      print(f'[resume] {name} ...', file=sys.stderr, flush=True)
      for row in time_resume(config, split, batch, fractions, repeats):
        out.append(f"| {name} | {row['examples']:,} | {row['fraction']:.0%} | "
                   f"{row['start_step']} | {row['offset']:,} | {row['setup_s']:.2f} | "
                   f"{row['first_batch_s']:.2f} |")
  return '\n'.join(out)
