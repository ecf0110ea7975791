r"""Classifies photos with a checkpoint and prints the top classes with their names.

  python -m vit_jax.tools.classify --checkpoint=ViT-B_16.npz [--model=ViT-B_16] cat.jpg dog.png
  python -m vit_jax.tools.classify --checkpoint=hf://google/vit-base-patch16-224 cat.jpg
  python -m vit_jax.tools.classify --checkpoint=gs://BUCKET/run/model.npz gs://BUCKET/cat.jpg

The checkpoint and the images may be local, on object storage (`gs://`), or (the checkpoint) a
Hugging Face Hub name (`models.loader`).

A model exported by a training run is fed as it was trained: its model card (`model.json` beside
`model.npz`) gives the architecture, the image size, the pixel normalisation and the class names,
and its `model_state.npz` the BatchNorm statistics. Other files are resized to the resolution
they were trained at (read from the position embedding; `--image_size` overrides) and scaled as
the model family expects ([-1, 1] for the Google ViT and hybrid models; `--normalization`
overrides). Class names come from `--labels`, the card, or `vit_jax/data/` when the head has
1,000 (ImageNet), 21,843 (ImageNet-21k), 10 or 100 (CIFAR) classes; other heads print class
indices. Unreadable images are reported on stderr, the rest are still classified, and
the exit status is 1.
"""

from __future__ import annotations

import sys
from typing import NamedTuple, Sequence

from absl import app
from absl import flags
import jax
import numpy as np

from vit_jax import checkpoint
from vit_jax.checkpoint import paths as paths_lib
from vit_jax.data import image_io
from vit_jax.data import labels as labels_lib
from vit_jax.models import loader

FLAGS = flags.FLAGS


class Prediction(NamedTuple):
  """One image's top classes, best first."""
  path: str
  classes: list[int]
  scores: list[float]
  names: list[str]


def class_names(num_classes: int, labels_file: str | None = None,
                card_names: Sequence[str] | None = None) -> tuple[str, list[str] | None]:
  """(description, names or None) for a head of `num_classes` outputs.

  A labels file wins over the names of the model card, which win over the built-in lists.
  """
  if labels_file:
    names = list(labels_lib.parse_labels(paths_lib.read_text(labels_file), labels_file))
    if len(names) != num_classes:
      raise ValueError(f'{labels_file} names {len(names)} classes, but the head has '
                       f'{num_classes}')
    return f'labels from {labels_file}', names
  if card_names is not None:
    return 'labels from the model card', list(card_names)
  found = labels_lib.labels_for_head(num_classes)
  if found is None:
    return (f'no label names are known for a {num_classes}-class head: printing class indices '
            '(pass --labels)'), None
  dataset, names = found
  return f'{dataset} labels', list(names)


def read_image(path: str) -> np.ndarray:
  """The image file at `path`, local or on object storage, as `image_io.read_image` reads it.

  Raises:
    FileNotFoundError: nothing at `path`.
    ImageError: not an image (a folder, or a file Pillow cannot decode).
  """
  if paths_lib.isdir(path):
    raise image_io.ImageError(f'{path} is a directory, not an image file')
  if not paths_lib.exists(path):
    raise FileNotFoundError(f'Image not found: {path}')
  with paths_lib.open_read(path) as f:
    return image_io.read_image(f, name=path)


def scores_from_logits(logits: np.ndarray, activation: str = 'auto') -> np.ndarray:
  """Softmax or sigmoid of (batch, classes) logits, computed in float64."""
  logits = np.asarray(logits, np.float64)
  if activation == 'auto':
    activation = 'sigmoid' if logits.shape[-1] == labels_lib.DATASETS['imagenet21k'][1] \
        else 'softmax'
  if activation == 'sigmoid':
    return 1. / (1. + np.exp(-logits))
  if activation == 'softmax':
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)
  raise ValueError(f"Unknown activation {activation!r}; expected 'auto', 'softmax' or 'sigmoid'")


def classify(loaded: loader.LoadedModel, paths: Sequence[str], *, top_k: int = 5,
             names: Sequence[str] | None = None, activation: str = 'auto',
             batch_size: int = 16) -> tuple[list[Prediction], dict[str, str]]:
  """Runs the model over image files.

  Returns:
    (predictions for the readable images, {path: error message} for the others).
  """
  if top_k < 1:
    raise ValueError(f'top_k must be positive, got {top_k}')
  apply = jax.jit(lambda variables, x: loaded.model.apply(variables, x, train=False))
  images, errors = {}, {}
  for path in paths:
    try:
      pixels = image_io.resize(read_image(path), loaded.image_size)
      images[path] = image_io.normalize(pixels, loaded.normalization)
    except (FileNotFoundError, image_io.ImageError) as e:
      errors[path] = str(e)

  predictions = []
  readable = list(images)
  for start in range(0, len(readable), batch_size):
    chunk = readable[start:start + batch_size]
    logits = np.asarray(apply(loaded.variables, np.stack([images[p] for p in chunk])))
    if logits.ndim != 2:
      raise ValueError(f'The model returns {logits.shape}, not (batch, classes) logits; does '
                       'the checkpoint have a classification head?')
    scores = scores_from_logits(logits, activation)
    k = min(top_k, scores.shape[-1])
    for path, row in zip(chunk, scores):
      top = np.argsort(-row, kind='stable')[:k]
      predictions.append(Prediction(
          path=path, classes=[int(i) for i in top], scores=[float(row[i]) for i in top],
          names=[names[i] if names is not None else f'class {i}' for i in top]))
  return predictions, errors


def format_predictions(predictions: Sequence[Prediction]) -> str:
  lines = []
  for prediction in predictions:
    lines.append(prediction.path)
    for rank, (index, score, name) in enumerate(
        zip(prediction.classes, prediction.scores, prediction.names), start=1):
      lines.append(f'  {rank}. {100 * score:6.2f}%  {name}  [{index}]')
  return '\n'.join(lines)


def define_flags() -> None:
  """The command's flags; defined only when run as a program, so the library imports cleanly."""
  flags.DEFINE_string('checkpoint', None, 'Model file: .npz (any layout), timm '
                      '.safetensors/.pth, or an HF folder; local, gs://..., or a Hub name '
                      '(hf://ORG/REPO[/FILE], hf-hub:ORG/REPO).')
  flags.DEFINE_string('model', None, 'Zoo model name, e.g. ViT-B_16. Optional for ViT, hybrid '
                      'and Swin checkpoints, whose architecture is read from parameter shapes.')
  flags.DEFINE_integer('top_k', 5, 'Number of classes to print per image.')
  flags.DEFINE_integer('image_size', None,
                       'Input resolution; default: the one the checkpoint was trained at.')
  flags.DEFINE_string('labels', None, 'Text file with one class name per line (local or '
                      'gs://...), overriding the built-in names.')
  flags.DEFINE_enum('activation', 'auto', ['auto', 'softmax', 'sigmoid'],
                    'Logits to scores. auto: sigmoid for 21,843-class heads (ImageNet-21k '
                    'pre-training is multi-label, trained with sigmoid cross-entropy), softmax '
                    'otherwise.')
  flags.DEFINE_integer('batch_size', 16, 'Images per forward pass.')
  flags.DEFINE_enum('normalization', None, list(image_io.NORMALIZATIONS),
                    'Pixel scaling. Default: what the model card beside the checkpoint records '
                    '(training exports have one), else the family default: minus_one_one for '
                    "Google's ViTs and hybrids, zero_one for BiT, imagenet for the rest (timm's "
                    'DeiT weights want imagenet).')
  flags.mark_flag_as_required('checkpoint')


def main(argv: Sequence[str]) -> int:
  paths = argv[1:]
  if not paths:
    raise app.UsageError('Name at least one image file')
  try:
    loaded = loader.load(FLAGS.checkpoint, FLAGS.model, image_size=FLAGS.image_size,
                         normalization=FLAGS.normalization)
  except (FileNotFoundError, KeyError, checkpoint.CheckpointError,
          paths_lib.MissingClientError) as e:
    sys.exit(f'classify: cannot load {FLAGS.checkpoint}: {e}')
  num_classes = getattr(loaded.model, 'num_classes', None)
  if not num_classes:
    sys.exit(f'classify: {FLAGS.checkpoint} has no classification head')
  try:
    description, names = class_names(num_classes, FLAGS.labels, loaded.class_names)
  except (OSError, ValueError) as e:
    sys.exit(f'classify: {e}')
  height, width = loaded.image_size
  print(f'{num_classes} classes ({description}); inputs {height}x{width}, '
        f'{loaded.normalization} pixels')

  predictions, errors = classify(loaded, paths, top_k=FLAGS.top_k, names=names,
                                 activation=FLAGS.activation, batch_size=FLAGS.batch_size)
  if predictions:
    print(format_predictions(predictions))
  for path, message in errors.items():
    print(f'classify: skipped {path}: {message}', file=sys.stderr)
  return 1 if errors else 0


if __name__ == '__main__':
  define_flags()
  app.run(main)
