"""`python -m vit_jax.tools.fewshot`: few-shot linear-probe accuracies of any model file.

  python -m vit_jax.tools.fewshot --checkpoint=model.npz --dataset=cifar10 --image_size=224

The file is read by the one loader (`models.loader`): local, on object storage (`gs://`), or a
Hugging Face Hub name. A training export (a file with a model card) is fed as its job's
evaluation fed it (the card's `pp_eval`), so the export and a converted copy of it give the
same accuracies as the job's own few-shot probe. Other files follow
big_vision's `configs/common_fewshot.py`: images resized to 256x256 and centre-cropped to 224
(scaled for other model sizes). Shots are drawn with 3 seeds (`--num_seeds`), each accuracy the
mean over the seeds (big_vision logs one per seed). The probes are `training.fewshot`'s
(big_vision's `fewshot_lsr`).
"""

from __future__ import annotations

import sys
from typing import Any, Sequence

from absl import app
from absl import flags

from vit_jax.training.fewshot import DEFAULT_L2_REG
from vit_jax.training.fewshot import DEFAULT_SHOTS
from vit_jax.training.fewshot import Probe

# ---------------------------------------------------------------------------------------------
# Command.

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags; defined only when run as a program, so the library imports cleanly."""
  flags.DEFINE_string('checkpoint', None, 'Checkpoint: .npz (any layout), timm or HF; local, '
                      'gs://..., or a Hub name (hf://ORG/REPO[/FILE], hf-hub:ORG/REPO).')
  flags.DEFINE_string('model', None, 'Zoo model name; optional for ViT checkpoints.')
  flags.DEFINE_string('dataset', 'cifar10', "TFDS name, or 'imagefolder' with --data_dir.")
  flags.DEFINE_string('data_dir', None, 'TFDS data dir, or the image folder root (any path '
                      'TensorFlow reads: local, gs://...).')
  flags.DEFINE_string('train_split', 'train[:2000]', 'Where the shots are drawn from.')
  flags.DEFINE_string('test_split', 'test[:2000]', 'Where the probes are scored.')
  flags.DEFINE_integer('image_size', None, 'Input size; by default the checkpoint\'s.')
  flags.DEFINE_string('pp', None, 'Preprocessing; by default big_vision\'s few-shot one, '
                      'resize(256)|central_crop(224) scaled to the model size, + the file\'s '
                      'normalisation.')
  flags.DEFINE_integer('num_seeds', 3, 'Draws of the shots, averaged (big_vision: 3).')
  flags.DEFINE_list('shots', [str(n) for n in DEFAULT_SHOTS], 'Shots per class.')
  flags.DEFINE_float('l2_reg', DEFAULT_L2_REG, 'Ridge regularisation.')
  flags.DEFINE_integer('batch_size', 64, 'Images per forward pass.')
  flags.mark_flag_as_required('checkpoint')


def default_pp(size: int, normalization: Any) -> str:
  """big_vision's few-shot preprocessing, `resize(256)|central_crop(224)` at 224 px, scaled to
  `size`, then the model's pixel normalisation."""
  from vit_jax.data import preprocess  # pylint: disable=g-import-not-at-top
  return (f'resize({round(size * 256 / 224)})|central_crop({size})|'
          f'{preprocess.normalization_spec(normalization)}')


def main(argv: Sequence[str]) -> int:
  del argv
  from vit_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  from vit_jax.models import loader  # pylint: disable=g-import-not-at-top
  try:
    loaded = loader.load(FLAGS.checkpoint, FLAGS.model, image_size=FLAGS.image_size)
  except (FileNotFoundError, KeyError, ValueError, ImportError) as e:  # Import: no gcsfs.
    sys.exit(f'fewshot: cannot load {FLAGS.checkpoint}: {e}')
  height, width = loaded.image_size
  # A training export is probed as its job's few-shot evaluator probed it (the card's pp_eval);
  # other files with big_vision's protocol.
  pp = FLAGS.pp or loaded.pp_eval or default_pp(height, loaded.normalization)
  train, test = (input_pipeline.eval_dataset(
      input_pipeline.get_source(FLAGS.dataset, split, data_dir=FLAGS.data_dir),
      FLAGS.batch_size, pp=pp, image_size=(height, width), skip_corrupt_images=True)[0]
                 for split in (FLAGS.train_split, FLAGS.test_split))
  probe = Probe(loaded.model, train, test, shots=[int(n) for n in FLAGS.shots],
                l2_reg=FLAGS.l2_reg, seed=0, num_seeds=FLAGS.num_seeds)
  for name, accuracy in probe(loaded.variables).items():
    print(f'fewshot_{name}: {accuracy:.4f}')
  return 0


if __name__ == '__main__':
  define_flags()
  app.run(main)
