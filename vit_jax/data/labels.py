"""Class names of the datasets the released checkpoints were trained on.

The files in `vit_jax/data/` hold one name per line, line i naming class i:

- `imagenet2012_labels.txt`: the 1,000 ILSVRC-2012 classes in the order of the released heads
  (sorted WordNet ids), each as its WordNet lemmas ("tench, Tinca tinca").
- `imagenet21k_labels.txt`: the 21,843 ImageNet-21k classes of Google's pre-training heads, also
  sorted by WordNet id, as lemmas. Both were generated from the synset lists and the synset→lemma
  table that timm ships (`timm/data/_info/`), which follow the same WordNet ids.
- `cifar10_labels.txt`, `cifar100_labels.txt`: the datasets' own label names (CIFAR-100: the 100
  fine labels, in their alphabetical index order).

Heads of other sizes get no names; callers print class indices instead.
"""

from __future__ import annotations

import functools
import os

_DATA_DIR = os.path.dirname(os.path.abspath(__file__))  # The label lists sit beside this module.

# Dataset name -> (file, number of classes). Head sizes are unique, so a head picks its dataset.
DATASETS: dict[str, tuple[str, int]] = {
    'imagenet2012': ('imagenet2012_labels.txt', 1000),
    'imagenet21k': ('imagenet21k_labels.txt', 21843),
    'cifar10': ('cifar10_labels.txt', 10),
    'cifar100': ('cifar100_labels.txt', 100),
}


def parse_labels(text: str, source: str) -> tuple[str, ...]:
  """The class names of a label file's text, one per line (blank lines are errors, not skipped);
  `source` names the file in messages."""
  names = tuple(text.split('\n'))
  if names and names[-1] == '':
    names = names[:-1]  # The final line's end.
  if any(not name.strip() for name in names):
    raise ValueError(f'{source} has a blank line; a label file names one class per line')
  return names


@functools.cache
def _package_labels(filename: str) -> tuple[str, ...]:
  """A label file of this package (`vit_jax/data/`); users' files come as text (`parse_labels`)."""
  with open(os.path.join(_DATA_DIR, filename), encoding='utf-8') as f:
    return parse_labels(f.read(), filename)


def dataset_labels(dataset: str) -> tuple[str, ...]:
  """The class names of one of `DATASETS`, e.g. `dataset_labels('cifar10')[3] == 'cat'`."""
  if dataset not in DATASETS:
    raise KeyError(f'No label names for {dataset!r}; known: {", ".join(sorted(DATASETS))}')
  filename, num_classes = DATASETS[dataset]
  names = _package_labels(filename)
  if len(names) != num_classes:
    raise ValueError(f'{filename} has {len(names)} names, expected {num_classes}')
  return names


def labels_for_head(num_classes: int) -> tuple[str, tuple[str, ...]] | None:
  """(dataset, names) for a head of `num_classes` outputs, or None when no dataset has that many."""
  for dataset, (_, size) in DATASETS.items():
    if size == num_classes:
      return dataset, dataset_labels(dataset)
  return None
