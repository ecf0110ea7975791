"""Few-shot linear probes on frozen features (big_vision's `fewshot_lsr` evaluator).

For each n in `shots`, n training images per class are embedded with the model's pre-logits
features; the features are standardised (train mean and std), a large constant bias feature is
appended, and a ridge regression onto +-1 one-hot targets is solved in closed form; the probe's
argmax accuracy on the test images is the n-shot accuracy. The solve uses one eigendecomposition
of the smaller Gram matrix (X^T X or X X^T), as big_vision does.

As a command:
  python -m vit_jax.fewshot --checkpoint=model.npz --dataset=cifar10 --image_size=224

The command follows big_vision's `configs/common_fewshot.py` by default: images resized to
256x256 and centre-cropped to 224 (scaled for other model sizes), shots drawn with 3 seeds
(`--num_seeds`), each accuracy the mean over the seeds (big_vision logs one per seed).
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Mapping, Sequence

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

# Large, so that the bias is almost unregularised (big_vision's value).
BIAS_CONSTANT = 100.
DEFAULT_SHOTS = (1, 5, 10, 25)
DEFAULT_L2_REG = 2.**10


def _standardise(x: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
  x = (x - mean) / std
  return jnp.pad(x, ((0, 0), (0, 1)), constant_values=BIAS_CONSTANT)


def fit_lsr(x: jax.Array, y: jax.Array, num_classes: int,
            l2_reg: float = DEFAULT_L2_REG) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Ridge regression of +-1 one-hot targets on standardised features.

  Returns (mean, std, w) with w of shape (features + 1, classes); see `predict_lsr`.
  """
  x = jnp.asarray(x, jnp.float32)
  mean = jnp.mean(x, axis=0, keepdims=True)
  std = jnp.std(x, axis=0, keepdims=True) + 1e-5
  x = _standardise(x, mean, std)
  targets = 2. * jax.nn.one_hot(y, num_classes) - 1.
  n, d = x.shape
  if n >= d:  # w = (X^T X + l I)^-1 X^T Y, through the eigenbasis of X^T X.
    eigs, q = jnp.linalg.eigh(x.T @ x)
    rhs, lhs = q.T @ (x.T @ targets), q
  else:  # The same w = X^T (X X^T + l I)^-1 Y, with the n x n Gram matrix.
    eigs, q = jnp.linalg.eigh(x @ x.T)
    rhs, lhs = q.T @ targets, x.T @ q
  w = (lhs / (eigs + l2_reg)[None]) @ rhs
  return mean, std, w


def predict_lsr(probe: tuple[jax.Array, jax.Array, jax.Array], x: jax.Array) -> jax.Array:
  """Class predictions of a `fit_lsr` probe."""
  mean, std, w = probe
  return jnp.argmax(_standardise(jnp.asarray(x, jnp.float32), mean, std) @ w, axis=1)


def select_shots(labels: np.ndarray, shots: int, num_classes: int, seed: int = 0) -> np.ndarray:
  """Indices of `shots` examples of each class, as big_vision's fewshot_lsr draws them.

  Raises:
    ValueError: a class with fewer than `shots` examples (naming it).
  """
  rng = np.random.default_rng(seed)
  picked = []
  for c in range(num_classes):
    of_class = rng.permutation(np.where(labels == c)[0])[:shots]
    if len(of_class) < shots:
      raise ValueError(f'Class {c} has {len(of_class)} training examples, fewer than {shots} '
                       'shots; use a larger fewshot train split')
    picked.append(of_class)
  return np.concatenate(picked)


def probe_accuracies(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                     num_classes: int, shots: Sequence[int] = DEFAULT_SHOTS,
                     l2_reg: float = DEFAULT_L2_REG, seed: int = 0,
                     num_seeds: int = 1) -> dict[int, float]:
  """n-shot accuracy for each n in `shots`, from (features, labels) of both splits.

  With `num_seeds` > 1, the mean accuracy over the draws of seeds seed, seed + 1, ...
  """
  (x_train, y_train), (x_test, y_test) = train, test
  results = {}
  for n in shots:
    accuracies = []
    for s in range(seed, seed + num_seeds):
      idx = select_shots(np.asarray(y_train), n, num_classes, s)
      probe = fit_lsr(x_train[idx], y_train[idx], num_classes, l2_reg)
      accuracies.append(np.mean(np.asarray(predict_lsr(probe, x_test)) == np.asarray(y_test)))
    results[n] = float(np.mean(accuracies))
  return results


def features(apply_fn: Callable[[jax.Array], jax.Array], config: Any, split: str,
             batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
  """(features, labels) of every example of `split` of `config.dataset`, preprocessed with
  `config.pp_eval` at `config.image_size`."""
  from vit_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  source = input_pipeline.get_source(config, split)
  ds, _ = input_pipeline.eval_dataset(config, source, batch_size)
  feats, labels = [], []
  for batch in ds.as_numpy_iterator():
    keep = batch['mask'] > 0
    feats.append(np.asarray(apply_fn(batch['image']))[keep])
    labels.append(batch['label'][keep])
  return np.concatenate(feats), np.concatenate(labels)


def pre_logits_fn(model: Any, variables: Mapping[str, Any]) -> Callable[[jax.Array], jax.Array]:
  """A jitted function images -> pre-logits features (the model without its head)."""
  headless = model.clone(num_classes=None)
  params = {k: v for k, v in variables['params'].items() if k not in ('head', 'head_dist')}
  variables = {**variables, 'params': params}
  return jax.jit(lambda images: headless.apply(variables, images, train=False))


def evaluate(model: Any, variables: Mapping[str, Any], config: Any) -> dict[str, float]:
  """`fewshot_{n}shot` accuracies of the model's features on `config.fewshot`'s splits."""
  fs = config.fewshot
  apply_fn = pre_logits_fn(model, variables)
  train = features(apply_fn, config, fs.train_split, fs.batch_size)
  test = features(apply_fn, config, fs.test_split, fs.batch_size)
  num_classes = int(max(train[1].max(), test[1].max())) + 1
  accuracies = probe_accuracies(train, test, num_classes, tuple(fs.shots), fs.l2_reg, fs.seed,
                                int(fs.get('num_seeds', 1)))
  return {f'fewshot_{n}shot': acc for n, acc in accuracies.items()}


# ---------------------------------------------------------------------------------------------
# Command.

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags; defined only when run as a program, so the library imports cleanly."""
  flags.DEFINE_string('checkpoint', None, 'Checkpoint: .npz (any layout), timm or HF.')
  flags.DEFINE_string('model', None, 'Zoo model name; optional for ViT checkpoints.')
  flags.DEFINE_string('dataset', 'cifar10', "TFDS name, or 'imagefolder' with --data_dir.")
  flags.DEFINE_string('data_dir', None, 'TFDS data dir, or the image folder root.')
  flags.DEFINE_string('train_split', 'train[:2000]', 'Where the shots are drawn from.')
  flags.DEFINE_string('test_split', 'test[:2000]', 'Where the probes are scored.')
  flags.DEFINE_integer('image_size', None, 'Input size; by default the checkpoint\'s.')
  flags.DEFINE_string('pp', None, 'Preprocessing; by default big_vision\'s few-shot one, '
                      'resize(256)|central_crop(224) scaled to the model size, + the family\'s '
                      'normalisation.')
  flags.DEFINE_integer('num_seeds', 3, 'Draws of the shots, averaged (big_vision: 3).')
  flags.DEFINE_list('shots', [str(n) for n in DEFAULT_SHOTS], 'Shots per class.')
  flags.DEFINE_float('l2_reg', DEFAULT_L2_REG, 'Ridge regularisation.')
  flags.DEFINE_integer('batch_size', 64, 'Images per forward pass.')
  flags.mark_flag_as_required('checkpoint')


_PP = {'minus_one_one': 'value_range(-1, 1)', 'zero_one': 'value_range(0, 1)',
       'imagenet': 'normalize("imagenet")'}


def default_pp(size: int, normalization: str) -> str:
  """big_vision's few-shot preprocessing, `resize(256)|central_crop(224)` at 224 px."""
  return (f'resize({round(size * 256 / 224)})|central_crop({size})|'
          f'{_PP.get(normalization, "")}').rstrip('|')


def main(argv: Sequence[str]) -> int:
  del argv
  import ml_collections  # pylint: disable=g-import-not-at-top
  from vit_jax import checkpoint, convert  # pylint: disable=g-import-not-at-top
  from vit_jax.checkpoint import model_from  # pylint: disable=g-import-not-at-top
  try:
    read = convert.read(FLAGS.checkpoint, model_name=FLAGS.model)
    # The GELU form the file was trained with, where its format says (timm, HF: exact).
    overrides = {} if read.gelu_approximate is None or FLAGS.model else {
        'transformer': {'gelu_approximate': read.gelu_approximate}}
    loaded = model_from.load_model(checkpoint.unflatten(read.params), FLAGS.model,
                                   image_size=FLAGS.image_size, **overrides)
  except (FileNotFoundError, KeyError, ValueError) as e:
    sys.exit(f'fewshot: cannot load {FLAGS.checkpoint}: {e}')
  height, width = loaded.image_size
  config = ml_collections.ConfigDict(dict(
      dataset=FLAGS.dataset, data_dir=FLAGS.data_dir, download=False,
      image_size=(height, width), pp_eval=FLAGS.pp or default_pp(height, loaded.normalization),
      fewshot=dict(train_split=FLAGS.train_split, test_split=FLAGS.test_split,
                   shots=[int(n) for n in FLAGS.shots], l2_reg=FLAGS.l2_reg, seed=0,
                   num_seeds=FLAGS.num_seeds, batch_size=FLAGS.batch_size)))
  results = evaluate(loaded.model, {'params': loaded.params}, config)
  for name, accuracy in results.items():
    print(f'{name}: {accuracy:.4f}')
  return 0


if __name__ == '__main__':
  define_flags()
  app.run(main)
