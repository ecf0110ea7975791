"""tf.data input: TFDS datasets or image folders, resumable training streams, exact evaluation.

The training stream is a pure function of (config, step): epochs are shuffled with per-epoch seeds
and every random op is stateless, seeded by the example's global position in the stream (so
processes draw different augmentations). Restarting at step s therefore yields exactly the
batches an uninterrupted run would have seen from step s. Records stay encoded (JPEG/PNG bytes
or file paths) through caching, shuffling and a resume's skip, and are decoded after, as the
original's `tfds.decode.SkipDecoding()`: the shuffle buffer holds encoded images, and resuming
decodes nothing it skips. Each process reads only its own slice of every split. Evaluation
visits every example exactly once: the last batch is padded and the padding masked out.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import os
import re
from typing import Any, Callable, Iterator

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from vit_jax import preprocess

_IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif')
_SLICE_RE = re.compile(r'^(\w+)(?:\[(-?\d*%?):(-?\d*%?)\])?$')


@dataclasses.dataclass(frozen=True)
class Source:
  """One split of one dataset, already restricted to this process's slice."""
  encoded: tf.data.Dataset  # of {'image': encoded bytes or a file path, 'label': int64}
  decode: Callable[[dict[str, tf.Tensor]], dict[str, tf.Tensor]]  # -> image uint8 (H, W, C)
  num_examples: int  # in this process's slice
  max_process_examples: int  # the largest slice over processes (fixes the eval step count)
  num_classes: int
  # Records small enough (file paths) for one shuffle buffer to hold the whole split, so every
  # epoch is a full permutation whatever config.shuffle_buffer says.
  shuffle_whole_split: bool = False
  class_names: tuple[str, ...] | None = None  # by label; None where the dataset names none

  @property
  def dataset(self) -> tf.data.Dataset:
    """The decoded examples {'image': uint8 (H, W, C), 'label': int64}, in order."""
    return self.encoded.map(self.decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _data_dir(config: Any) -> str | None:
  return config.get('data_dir') or os.environ.get('TFDS_DATA_DIR')


# ---------------------------------------------------------------------------------------------
# Sources.


def _tfds_builder(config: Any) -> tfds.core.DatasetBuilder:
  try:
    builder = tfds.builder(config.dataset, data_dir=_data_dir(config))
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(f'Unknown dataset {config.dataset!r} (config.dataset): {e}') from e
  if not builder.is_prepared():
    if not config.get('download', True):
      raise ValueError(f'Dataset {config.dataset!r} is not prepared in {builder.data_dir} and '
                       'config.download is False')
    builder.download_and_prepare()
  return builder


def _check_split(split: str, known: list[str], what: str) -> None:
  base = split.split('[')[0].split('+')[0]
  if base not in known:
    raise ValueError(f'Unknown split {split!r} for {what}; available splits: {sorted(known)}')


def _tfds_source(config: Any, split: str) -> Source:
  builder = _tfds_builder(config)
  _check_split(split, list(builder.info.splits), f'dataset {config.dataset!r}')
  count = jax.process_count()
  try:
    process_splits = tfds.even_splits(split, n=count, drop_remainder=False)
    sizes = [builder.info.splits[s].num_examples for s in process_splits]
  except (ValueError, KeyError, AssertionError) as e:
    raise ValueError(f'Bad split {split!r} for dataset {config.dataset!r}: {e}') from e
  ds = builder.as_dataset(split=process_splits[jax.process_index()], shuffle_files=False,
                          decoders={'image': tfds.decode.SkipDecoding()})
  ds = ds.map(lambda ex: {'image': ex['image'], 'label': ex['label']},
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  image_feature = builder.info.features['image']

  def decode(ex):
    return {'image': image_feature.decode_example(ex['image']), 'label': ex['label']}

  label = builder.info.features['label']
  return Source(ds, decode, sizes[jax.process_index()], max(sizes), label.num_classes,
                class_names=tuple(label.names) if getattr(label, 'names', None) else None)


def _slice(n: int, bound: str, default: int) -> int:
  if not bound:
    return default
  if bound.endswith('%'):
    return round(n * int(bound[:-1]) / 100)
  return int(bound)


def _imagefolder_source(config: Any, split: str) -> Source:
  """`data_dir/<split>/<class>/*.jpg|png`; classes are the sorted folder names of `train`.

  Like the original's `tf.data.Dataset.list_files`, the files are listed in a (fixed-seed)
  random order before slicing, so every slice holds every class in proportion, and processes
  take interleaved shards of it.
  """
  root = config.get('data_dir')
  if not root or not os.path.isdir(root):
    raise ValueError(f"dataset 'imagefolder' needs config.data_dir to be a folder, got {root!r}")
  match = _SLICE_RE.match(split)
  if not match:
    raise ValueError(f'Bad split {split!r}; expected NAME or NAME[a:b] (a, b ints or percents)')
  name, lo, hi = match.groups()
  known = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
  _check_split(name, known, f'image folder {root}')
  class_root = os.path.join(root, 'train' if 'train' in known else name)
  classes = sorted(d for d in os.listdir(class_root)
                   if os.path.isdir(os.path.join(class_root, d)))
  files, labels = [], []
  for label, cls in enumerate(classes):
    folder = os.path.join(root, name, cls)
    if not os.path.isdir(folder):
      continue
    for f in sorted(os.listdir(folder)):
      if f.lower().endswith(_IMAGE_EXTENSIONS):
        files.append(os.path.join(folder, f))
        labels.append(label)
  if not files:
    raise ValueError(f'No images found under {os.path.join(root, name)}/<class>/')
  n = len(files)
  # A fixed seed: `train[:98%]` and `train[98%:]` must come from the same order.
  order = np.random.default_rng(0).permutation(n)
  start, stop = _slice(n, lo or '', 0), _slice(n, hi or '', n)
  order = order[start:stop]
  count = jax.process_count()
  mine = order[jax.process_index()::count]
  largest = -(-len(order) // count)
  ds = tf.data.Dataset.from_tensor_slices(
      {'image': np.array(files)[mine].astype(str), 'label': np.array(labels, np.int64)[mine]})

  def decode(ex):
    return {'image': tf.io.decode_image(tf.io.read_file(ex['image']), channels=3,
                                        expand_animations=False),
            'label': ex['label']}

  return Source(ds, decode, len(mine), largest, len(classes), shuffle_whole_split=True,
                class_names=tuple(classes))


def get_source(config: Any, split: str) -> Source:
  """The process-local slice of `split` of `config.dataset` (a TFDS name or 'imagefolder')."""
  if config.dataset == 'imagefolder':
    return _imagefolder_source(config, split)
  return _tfds_source(config, split)


# ---------------------------------------------------------------------------------------------
# Datasets.


def _example_seed(seed: int, position: tf.Tensor) -> tf.Tensor:
  return tf.stack([tf.constant(seed, tf.int64), tf.cast(position, tf.int64)])


def _at_model_size(image: tf.Tensor, image_size: int | tuple[int, int]) -> tf.Tensor:
  """The preprocessed image at `image_size`, with a static shape.

  Ops such as `normalize` alone keep each file's own size (image folders hold any sizes): such
  images are resized here. An op that produced another fixed size is a config error.
  """
  size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
  static = tuple(image.shape[:2])
  if None not in static and static != size:
    raise ValueError(f'The preprocessing ops produce {static[0]}x{static[1]} images but '
                     f'config.image_size is {size}; make the ops\' sizes match it (or leave them '
                     'open: images are then resized to config.image_size)')
  if None in static:
    image = preprocess.resize_image(image, size)
  return tf.ensure_shape(image, size + (image.shape[-1] if image.shape[-1] is not None else 3,))


def _global_position(position: tf.Tensor, local_batch: int) -> tf.Tensor:
  """The index in the global stream of this process's `position`-th example.

  Global batch b is the concatenation of every process's local batch b, in process order.
  """
  step, row = position // local_batch, position % local_batch
  return (step * jax.process_count() + jax.process_index()) * local_batch + row


def train_dataset(config: Any, source: Source, local_batch: int, start_step: int = 0,
                  ) -> tf.data.Dataset:
  """Infinite stream of local training batches starting at optimizer step `start_step`."""
  if source.num_examples < local_batch:
    raise ValueError(f'The training split has {source.num_examples} examples on this process, '
                     f'fewer than one local batch ({local_batch})')
  ops = preprocess.parse(config.pp_train, config.image_size)
  base = source.encoded.cache() if config.get('cache_train', False) else source.encoded
  seed = int(config.seed)
  n = source.num_examples
  buffer = n if source.shuffle_whole_split else config.get('shuffle_buffer', 50_000)

  repeats = int(config.get('repeated_augmentation', 1))

  def epoch(index):
    epoch_seed = seed * 1_000_003 + index
    ds = base
    if repeats > 1:
      # DeiT's RASampler: the epoch's ceil(n / r) images are the first of a fresh permutation of
      # all n (index_shuffle: example i is kept where its place in the permutation is early).
      keep = -(-n // repeats)
      perm_seed = tf.stack([tf.cast(epoch_seed, tf.int64), tf.constant(7, tf.int64)])
      ds = ds.enumerate().filter(
          lambda i, ex: tf.random.experimental.index_shuffle(i, perm_seed, n - 1) < keep)
      ds = ds.map(lambda i, ex: ex)
    ds = ds.shuffle(buffer, seed=epoch_seed, reshuffle_each_iteration=False)
    if repeats > 1:
      # Each image `repeats` times in a row (each copy gets its own stream position, hence its
      # own augmentation); an epoch keeps num_examples samples.
      ds = ds.flat_map(lambda ex: tf.data.Dataset.from_tensors(ex).repeat(repeats)).take(n)
    return ds

  start_example = start_step * local_batch
  first_epoch, offset = divmod(start_example, source.num_examples)
  ds = tf.data.Dataset.range(first_epoch, 2**40).flat_map(epoch).skip(offset)
  ds = tf.data.Dataset.zip(tf.data.Dataset.range(start_example, 2**62), ds)

  def process(position, example):
    example = source.decode(example)
    image = preprocess.apply(ops, example['image'],
                             _example_seed(seed, _global_position(position, local_batch)))
    return {'image': _at_model_size(image, config.image_size), 'label': tf.cast(example['label'], tf.int32)}

  ds = ds.map(process, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.batch(local_batch, drop_remainder=True).prefetch(2)


def eval_dataset(config: Any, source: Source, local_batch: int) -> tuple[tf.data.Dataset, int]:
  """Local eval batches with a 'mask' (0 for padding); returns (dataset, number of batches).

  Every process yields the same number of batches, enough for the largest process slice.
  """
  ops = preprocess.parse(config.pp_eval, config.image_size)
  num_batches = -(-source.max_process_examples // local_batch)

  def process(example):
    image = preprocess.apply(ops, example['image'], _example_seed(0, 0))
    return {'image': _at_model_size(image, config.image_size),
            'label': tf.cast(example['label'], tf.int32), 'mask': tf.constant(1., tf.float32)}

  ds = source.dataset.map(process, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  # Padding is the first example zeroed and masked out: it has the real examples' shapes and
  # dtypes whatever the ops are, with no need for a static image shape.
  padding = ds.take(1).map(lambda ex: jax.tree.map(tf.zeros_like, ex))
  ds = ds.concatenate(padding.repeat(num_batches * local_batch - source.num_examples))
  return ds.batch(local_batch, drop_remainder=True).prefetch(2), num_batches


# ---------------------------------------------------------------------------------------------
# To devices.


def prefetch_to_mesh(batches: Iterator[dict[str, np.ndarray]], sharding: jax.sharding.Sharding,
                     size: int = 2) -> Iterator[dict[str, jax.Array]]:
  """Turns process-local numpy batches into global arrays, `size` batches ahead."""
  queue = collections.deque()

  def enqueue(n):
    for batch in itertools.islice(batches, n):
      queue.append(jax.tree.map(
          lambda x: jax.make_array_from_process_local_data(sharding, x), batch))

  enqueue(size)
  while queue:
    yield queue.popleft()
    enqueue(1)
