"""Images/s per CPU core of the fine-tuning input pipeline on ImageNet-size JPEGs.

The training stream of `input_pipeline.train_dataset` (read, decode, preprocess, batch) runs in
a child process pinned to 1, 2, ... cores (TensorFlow sizes its thread pools by the cores it may
use), on a generated image folder of JPEGs at ImageNet's typical sizes. The figure sizes the host
that must feed an accelerator: cores needed = accelerator img/s / (img/s per core).

TensorFlow and Pillow are imported when a function runs, not with this module.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import tempfile
import time
from typing import Any, Sequence

import numpy as np

from vit_jax.training import base_config

# ImageNet's most common shapes: 500x375 landscape and 375x500 portrait (height, width).
SHAPES = ((375, 500), (500, 375), (333, 500))
PP_FINETUNE = 'inception_crop|flip_lr|value_range(-1, 1)'


def write_jpeg_folder(root: str, num_images: int, num_classes: int = 10,
                      quality: int = 90) -> float:
  """Writes `num_images` photo-like JPEGs to ROOT/train/<class>/; returns their mean KiB.

  Smooth random fields plus fine noise compress like photographs (ImageNet's JPEGs average
  about 110 KiB), where pure noise or flat colour would make decoding unrealistically slow or
  fast.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  total = 0
  for label in range(num_classes):
    os.makedirs(os.path.join(root, 'train', f'class_{label}'), exist_ok=True)
  for i in range(num_images):
    h, w = SHAPES[i % len(SHAPES)]
    coarse = Image.fromarray(rng.integers(0, 256, (h // 6, w // 6, 3), dtype=np.uint8))
    smooth = np.asarray(coarse.resize((w, h), Image.BICUBIC), np.int16)
    pixels = np.clip(smooth + rng.integers(-24, 25, (h, w, 3)), 0, 255).astype(np.uint8)
    path = os.path.join(root, 'train', f'class_{i % num_classes}', f'{i}.jpg')
    Image.fromarray(pixels).save(path, quality=quality)
    total += os.path.getsize(path)
  return total / num_images / 1024


def _config(root: str, image_size: int, pp: str) -> Any:
  config = base_config.get_config()
  config.update(dataset='imagefolder', data_dir=root, image_size=image_size, pp_train=pp)
  return config


def _measure(cores: Sequence[int], root: str, image_size: int, pp: str, batch: int,
             batches: int, queue: Any) -> None:
  """In a child process: pins it to `cores`, then puts the stream's images/s on `queue`."""
  os.sched_setaffinity(0, cores)  # Before TensorFlow starts its threads, which inherit it.
  from vit_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  config = _config(root, image_size, pp)
  source = input_pipeline.get_source(config.dataset, 'train', data_dir=config.data_dir)
  stream = input_pipeline.train_dataset(config, source, batch).as_numpy_iterator()
  for _ in range(2):  # Thread pools, autotuning and the page cache warm up.
    next(stream)
  start = time.perf_counter()
  for _ in range(batches):
    next(stream)
  queue.put(batches * batch / (time.perf_counter() - start))


def images_per_s(cores: int, root: str, image_size: int, pp: str, batch: int,
                 batches: int) -> float:
  """Images/s of the training stream over `root`'s image folder, on `cores` cores."""
  context = multiprocessing.get_context('spawn')
  queue = context.Queue()
  child = context.Process(target=_measure, args=(
      tuple(sorted(os.sched_getaffinity(0)))[:cores], root, image_size, pp, batch, batches,
      queue))
  child.start()
  child.join()
  if child.exitcode != 0:
    raise RuntimeError(f'The preprocessing benchmark on {cores} core(s) failed '
                       f'(exit code {child.exitcode})')
  return queue.get()


def preprocess_table(num_images: int, image_size: int, batch: int, batches: int) -> str:
  """The markdown table of `--preprocess`: img/s and img/s per core on 1 and on all cores."""
  available = len(os.sched_getaffinity(0))
  with tempfile.TemporaryDirectory() as root:
    print(f'[preprocess] writing {num_images} JPEGs ...', file=sys.stderr, flush=True)
    kib = write_jpeg_folder(root, num_images)
    rows = []
    for cores in sorted({1, available}):
      print(f'[preprocess] {cores} core(s) ...', file=sys.stderr, flush=True)
      rate = images_per_s(cores, root, image_size, PP_FINETUNE, batch, batches)
      rows.append(f'| {cores} | {rate:.1f} | {rate / cores:.1f} |')
  shapes = ', '.join(f'{w}x{h}' for h, w in SHAPES)
  return '\n'.join([
      f"Fine-tuning input pipeline: read + decode + pp_train '{PP_FINETUNE}' at "
      f'{image_size}x{image_size} + batch {batch}, on {num_images} generated JPEGs ({shapes}; '
      f'mean {kib:.0f} KiB, quality 90) in an image folder; {batches} batches after 2 untimed.',
      '',
      '| cores | img/s | img/s per core |',
      '|---:|---:|---:|',
      *rows])
