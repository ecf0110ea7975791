"""`python -m vit_jax.tools.fewshot`: few-shot linear-probe accuracies of any model file.

  python -m vit_jax.tools.fewshot --checkpoint=model.npz --dataset=cifar10 --image_size=224

The file is read by the one loader (`models.loader`), so a training export is fed as its job's
evaluation fed it (the model card's preprocessing), and a converted copy of it gives the same
accuracies. The probes are `training.fewshot`'s (big_vision's `fewshot_lsr`).
"""

from __future__ import annotations

import sys
from typing import Sequence

from absl import app
from absl import flags

from vit_jax.training.fewshot import DEFAULT_L2_REG
from vit_jax.training.fewshot import DEFAULT_SHOTS
from vit_jax.training.fewshot import evaluate

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
  flags.DEFINE_string('pp', None, 'Preprocessing; by default resize + the family\'s '
                      'normalisation.')
  flags.DEFINE_list('shots', [str(n) for n in DEFAULT_SHOTS], 'Shots per class.')
  flags.DEFINE_float('l2_reg', DEFAULT_L2_REG, 'Ridge regularisation.')
  flags.DEFINE_integer('batch_size', 64, 'Images per forward pass.')
  flags.mark_flag_as_required('checkpoint')


def main(argv: Sequence[str]) -> int:
  del argv
  import ml_collections  # pylint: disable=g-import-not-at-top
  from vit_jax.data import preprocess  # pylint: disable=g-import-not-at-top
  from vit_jax.models import loader  # pylint: disable=g-import-not-at-top
  try:
    loaded = loader.load(FLAGS.checkpoint, FLAGS.model, image_size=FLAGS.image_size)
  except (FileNotFoundError, KeyError, ValueError) as e:
    sys.exit(f'fewshot: cannot load {FLAGS.checkpoint}: {e}')
  height, width = loaded.image_size
  # As the job's evaluation fed the model (its card), else resize + the file's normalisation.
  pp = FLAGS.pp or loaded.pp_eval or (
      f'resize(({height}, {width}))|{preprocess.normalization_spec(loaded.normalization)}')
  config = ml_collections.ConfigDict(dict(
      dataset=FLAGS.dataset, data_dir=FLAGS.data_dir, download=False,
      image_size=(height, width), pp_eval=pp,
      fewshot=dict(train_split=FLAGS.train_split, test_split=FLAGS.test_split,
                   shots=[int(n) for n in FLAGS.shots], l2_reg=FLAGS.l2_reg, seed=0,
                   batch_size=FLAGS.batch_size)))
  results = evaluate(loaded.model, loaded.variables, config)
  for name, accuracy in results.items():
    print(f'{name}: {accuracy:.4f}')
  return 0


if __name__ == '__main__':
  define_flags()
  app.run(main)
