"""tf.data input: TFDS datasets or image folders, resumable training streams, exact evaluation.

The training stream is a pure function of (config, step): epochs are shuffled with per-epoch seeds
and every random op is stateless, seeded by the example's global position in the stream (so
processes draw different augmentations). Restarting at step s therefore yields exactly the
batches an uninterrupted run would have seen from step s. Records stay encoded (JPEG/PNG bytes
or file paths) through caching, shuffling and a resume's skip, and are decoded after, as the
original's `tfds.decode.SkipDecoding()`: the shuffle buffer holds encoded images, and resuming
decodes nothing it skips. Each process reads only its own slice of every split. Evaluation
visits every example exactly once: the last batch is padded and the padding masked out.

An image that cannot be decoded (a corrupt or truncated file) does not stop a run: it keeps its
place in the stream as a zero image with mask 0, so batch sizes, positions and resume offsets do
not change; its name is logged once per process and the train step gives it no weight. With
`config.skip_corrupt_images = False` it is an error naming the file instead.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import os
import re
import threading
from typing import Any, Callable, Iterator

from absl import logging
import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from vit_jax.data import preprocess

_IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif')
_SLICE_RE = re.compile(r'^(\w+)(?:\[(-?\d*%?):(-?\d*%?)\])?$')


@dataclasses.dataclass(frozen=True)
class Source:
  """One split of one dataset, already restricted to this process's slice."""
  # Of {'image': encoded bytes or a file path, 'label': int64} (TFDS: also 'index', for names).
  encoded: tf.data.Dataset
  decode: Callable[[dict[str, tf.Tensor]], dict[str, tf.Tensor]]  # -> image uint8 (H, W, C)
  num_examples: int  # in this process's slice
  max_process_examples: int  # the largest slice over processes (fixes the eval step count)
  num_classes: int
  # Records small enough (file paths) for one shuffle buffer to hold the whole split, so every
  # epoch is a full permutation whatever config.shuffle_buffer says.
  shuffle_whole_split: bool = False
  class_names: tuple[str, ...] | None = None  # by label; None where the dataset names none
  # An encoded record -> a string naming it in messages (its file, its TFDS id); None: the
  # record's position in the stream.
  name: Callable[[dict[str, tf.Tensor]], tf.Tensor] | None = None

  @property
  def dataset(self) -> tf.data.Dataset:
    """The decoded examples {'image': uint8 (H, W, C), 'label': int64}, in order."""
    return self.encoded.map(self.decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


# ---------------------------------------------------------------------------------------------
# Sources.


def _tfds_builder(dataset: str, data_dir: str | None, download: bool) -> tfds.core.DatasetBuilder:
  try:
    builder = tfds.builder(dataset, data_dir=data_dir or os.environ.get('TFDS_DATA_DIR'))
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(f'Unknown dataset {dataset!r} (config.dataset): {e}') from e
  if not builder.is_prepared():
    if not download:
      raise ValueError(f'Dataset {dataset!r} is not prepared in {builder.data_dir} and '
                       'config.download is False')
    builder.download_and_prepare()
  return builder


def _check_split(split: str, known: list[str], what: str) -> None:
  base = split.split('[')[0].split('+')[0]
  if base not in known:
    raise ValueError(f'Unknown split {split!r} for {what}; available splits: {sorted(known)}')


def _tfds_source(dataset: str, split: str, data_dir: str | None, download: bool) -> Source:
  builder = _tfds_builder(dataset, data_dir, download)
  _check_split(split, list(builder.info.splits), f'dataset {dataset!r}')
  count = jax.process_count()
  try:
    process_splits = tfds.even_splits(split, n=count, drop_remainder=False)
    sizes = [builder.info.splits[s].num_examples for s in process_splits]
  except (ValueError, KeyError, AssertionError) as e:
    raise ValueError(f'Bad split {split!r} for dataset {dataset!r}: {e}') from e
  index, process_split = jax.process_index(), process_splits[jax.process_index()]
  ds = builder.as_dataset(split=process_split, shuffle_files=False,
                          decoders={'image': tfds.decode.SkipDecoding()})
  # Records are named by their index in the split for messages: an int64 costs nothing through
  # the shuffle buffer and a resume's skip, where TFDS's `tfds_id` strings slowed both.
  ds = ds.enumerate().map(
      lambda index, ex: {'image': ex['image'], 'label': ex['label'], 'index': index},
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  image_feature = builder.info.features['image']

  def decode(ex):
    return {'image': image_feature.decode_example(ex['image']), 'label': ex['label']}

  label = builder.info.features['label']
  where = f'{dataset} {split}' + (f' (slice {index + 1} of {count})' if count > 1 else '')
  return Source(ds, decode, sizes[index], max(sizes), label.num_classes,
                class_names=tuple(label.names) if getattr(label, 'names', None) else None,
                name=lambda ex: tf.strings.join([where, ' example ',
                                                 tf.strings.as_string(ex['index'])]))


def _slice(n: int, bound: str, default: int) -> int:
  if not bound:
    return default
  if bound.endswith('%'):
    return round(n * int(bound[:-1]) / 100)
  return int(bound)


def _imagefolder_source(root: str | None, split: str) -> Source:
  """`data_dir/<split>/<class>/*.jpg|png`; classes are the sorted folder names of `train`.

  Like the original's `tf.data.Dataset.list_files`, the files are listed in a (fixed-seed)
  random order before slicing, so every slice holds every class in proportion, and processes
  take interleaved shards of it.
  """
  if not root or not tf.io.gfile.isdir(root):  # tf.io.gfile: local, gs://, any TF file system.
    raise ValueError(f"dataset 'imagefolder' needs config.data_dir to be a folder, got {root!r}")
  match = _SLICE_RE.match(split)
  if not match:
    raise ValueError(f'Bad split {split!r}; expected NAME or NAME[a:b] (a, b ints or percents)')
  name, lo, hi = match.groups()
  join, gfile = tf.io.gfile.join, tf.io.gfile
  known = sorted(d.rstrip('/') for d in gfile.listdir(root) if gfile.isdir(join(root, d)))
  _check_split(name, known, f'image folder {root}')
  class_root = join(root, 'train' if 'train' in known else name)
  classes = sorted(d.rstrip('/') for d in gfile.listdir(class_root)
                   if gfile.isdir(join(class_root, d)))
  files, labels = [], []
  for label, cls in enumerate(classes):
    folder = join(root, name, cls)
    if not gfile.isdir(folder):
      continue
    for f in sorted(gfile.listdir(folder)):
      if f.lower().endswith(_IMAGE_EXTENSIONS):
        files.append(join(folder, f))
        labels.append(label)
  if not files:
    raise ValueError(f'No images found under {join(root, name)}/<class>/')
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
                class_names=tuple(classes), name=lambda ex: ex['image'])


def get_source(dataset: str, split: str, *, data_dir: str | None = None,
               download: bool = False) -> Source:
  """The process-local slice of `split` ('train[:98%]') of `dataset`: a TFDS name (in `data_dir`,
  else TFDS_DATA_DIR; `download`: TFDS may download and prepare it) or 'imagefolder' (at
  `data_dir`)."""
  if dataset == 'imagefolder':
    return _imagefolder_source(data_dir, split)
  return _tfds_source(dataset, split, data_dir, download)


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
  """Infinite stream of local training batches of the job's `config` from step `start_step`.

  Batches are {'image', 'label', 'mask'}: 'mask' is 0 for an image that could not be decoded.
  """
  if source.num_examples < local_batch:
    raise ValueError(f'The training split has {source.num_examples} examples on this process, '
                     f'fewer than one local batch ({local_batch})')
  ops = preprocess.parse(config.pp_train, config.image_size)
  base = source.encoded.cache() if config.cache_train else source.encoded
  seed = int(config.seed)
  n = source.num_examples
  buffer = n if source.shuffle_whole_split else config.shuffle_buffer

  repeats = int(config.repeated_augmentation)

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
    example_seed = _example_seed(seed, _global_position(position, local_batch))
    image = preprocess.apply(ops, source.decode(example)['image'], example_seed)
    return _at_model_size(image, config.image_size)

  # Batched before decoding: one nested dataset per batch guards the decoding (see
  # `_batch_decoder`), far cheaper than one per example.
  ds = ds.batch(local_batch, drop_remainder=True)
  ds = ds.map(_batch_decoder(source, process, config.skip_corrupt_images),
              num_parallel_calls=_DECODE_BATCHES, deterministic=True)
  return ds.prefetch(2)


def eval_dataset(source: Source, local_batch: int, *, pp: str, image_size: int | tuple[int, int],
                 skip_corrupt_images: bool) -> tuple[tf.data.Dataset, int]:
  """Local eval batches of images preprocessed by `pp` to `image_size`, with a 'mask'; returns
  (dataset, number of batches). 'mask' is 1 for the examples to count, 0 for padding and for
  images that could not be decoded (those also have 'skipped' 1; an error naming them unless
  `skip_corrupt_images`).

  Every process yields the same number of batches, enough for the largest process slice.
  """
  ops = preprocess.parse(pp, image_size)
  num_batches = -(-source.max_process_examples // local_batch)

  def process(position, example):
    del position  # Evaluation is deterministic.
    image = preprocess.apply(ops, source.decode(example)['image'], _example_seed(0, 0))
    return _at_model_size(image, image_size)

  ds = tf.data.Dataset.zip(tf.data.Dataset.range(2**62), source.encoded).batch(local_batch)
  ds = ds.map(_batch_decoder(source, process, skip_corrupt_images),
              num_parallel_calls=_DECODE_BATCHES, deterministic=True)

  def pad(batch):
    # The last batch is padded with zeros, masked out; real examples not decoded are `skipped`.
    rows = local_batch - tf.shape(batch['label'])[0]
    return {'image': tf.pad(batch['image'], [[0, rows], [0, 0], [0, 0], [0, 0]]),
            'label': tf.pad(batch['label'], [[0, rows]]),
            'mask': tf.pad(batch['mask'], [[0, rows]]),
            'skipped': tf.pad(1. - batch['mask'], [[0, rows]])}

  ds = ds.map(pad)
  # tf.nest: AutoGraph cannot convert jax.tree.map (it warns, asking for a TF bug report).
  padding = ds.take(1).map(lambda batch: tf.nest.map_structure(tf.zeros_like, batch))
  ds = ds.concatenate(padding.repeat(num_batches - -(-source.num_examples // local_batch)))
  return ds.prefetch(2), num_batches


# ---------------------------------------------------------------------------------------------
# Images that cannot be decoded.

# Batches decoded at once: two keep the cores busy while one batch's last images finish.
_DECODE_BATCHES = 2

_reported_lock = threading.Lock()
_reported_names: set[str] = set()


def _report_undecodable(names: tf.Tensor, batch_size: tf.Tensor, fatal: tf.Tensor
                        ) -> tf.Tensor:
  """Logs each name once per process (not once per epoch), or raises naming them if `fatal`."""
  names = [n.decode('utf-8', 'replace') for n in names.numpy()]
  if bool(fatal.numpy()):
    raise ValueError(f'Cannot decode image {", ".join(names)} (set config.skip_corrupt_images '
                     'to skip such images)')
  if len(names) == int(batch_size.numpy()) > 1:
    # Not corrupt files but a pipeline that fails on every image (a format the decoder does not
    # read, an op that fails at run time): skipping would silently train on nothing.
    raise ValueError(f'None of the {len(names)} images of a batch could be decoded and '
                     f'preprocessed, e.g. {names[0]}: check the data and the pp ops')
  with _reported_lock:
    new = [n for n in names if n not in _reported_names]
    _reported_names.update(new)
  for name in new:
    logging.warning('Skipping an image that cannot be decoded (or preprocessed): %s', name)
  return tf.constant(len(names), tf.int32)


def _batch_decoder(source: Source, process: Callable[..., tf.Tensor], skip_corrupt_images: bool,
                   ) -> Callable[..., dict[str, tf.Tensor]]:
  """(positions, encoded records) -> {'image', 'label', 'mask'}, whatever fails to decode.

  `process(position, record)` decodes and preprocesses one record to a statically shaped image.
  A record whose `process` fails keeps its row as a zero image with mask 0 (its label stays), so
  the batch keeps its size and every other row its image.
  """
  fatal = not skip_corrupt_images

  def decode_batch(positions, examples):
    n = tf.shape(positions)[0]
    rows = tf.range(n)
    # A graph-level try/except: `ignore_errors` drops the examples that fail; the rows left over
    # say which. A zero sentinel after the survivors is the image of the failed rows.
    decoded = tf.data.Dataset.from_tensor_slices((rows, positions, examples)).map(
        lambda row, position, example: (row, process(position, example)),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).ignore_errors()
    spec = decoded.element_spec[1]
    sentinel = tf.data.Dataset.from_tensors((tf.constant(-1, tf.int32),
                                             tf.zeros(spec.shape, spec.dtype)))
    good_rows, images = decoded.concatenate(sentinel).batch(
        tf.cast(n, tf.int64) + 1).get_single_element()
    good_rows = good_rows[:-1]
    valid = tf.scatter_nd(good_rows[:, None], tf.ones_like(good_rows), [n]) > 0
    # The i-th valid row takes the i-th survivor, the others the sentinel (the last image).
    index = tf.where(valid, tf.cumsum(tf.cast(valid, tf.int32), exclusive=True),
                     tf.size(good_rows))
    images = tf.gather(images, index)

    def report():
      if source.name is not None:
        names = source.name(examples)
      else:
        names = tf.strings.join(['example at stream position ', tf.strings.as_string(positions)])
      return tf.py_function(_report_undecodable,
                            [tf.boolean_mask(names, ~valid), n, tf.constant(fatal)], tf.int32)

    reported = tf.cond(tf.reduce_all(valid), lambda: tf.constant(0, tf.int32), report)
    with tf.control_dependencies([reported]):
      mask = tf.cast(valid, tf.float32)
    return {'image': images, 'label': tf.cast(examples['label'], tf.int32), 'mask': mask}

  return decode_batch


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
