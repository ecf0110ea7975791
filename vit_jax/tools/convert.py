r"""Converts checkpoints between the original `.npz`, timm and Hugging Face formats.

  python -m vit_jax.tools.convert --from=ViT-B_16.npz --to=vit_b16.safetensors        # -> timm
  python -m vit_jax.tools.convert --from=vit_b16.safetensors --to=ViT-B_16.npz --check
  python -m vit_jax.tools.convert --from=ViT-B_16.npz --to=hf_vit_b16/                 # -> transformers
  python -m vit_jax.tools.convert --from=hf://google/vit-base-patch16-224 --to=gs://B/vit.npz

Sources and targets may be local or on object storage (`gs://`, `checkpoint.paths`); a source
may also be a Hugging Face Hub name (`hf://ORG/REPO[/FILE]`, `hf-hub:ORG/REPO`), read by the one
loader (`models.loader`).

Formats (`npz`, `timm`, `hf`), told apart by extension and, for torch files, by their keys, are
the table `vit_jax.models.formats.FORMATS`; this module is the command line over it.

Converting is exact: arrays are only transposed and reshaped, so a round trip returns the same
bits. `--check` builds the torch model of the other side (timm or transformers, with torch
installed) and reports the largest logit difference against ours on random inputs. torch and
transformers are imported only for `.pth` files and `--check`; `.npz` <-> `.safetensors` needs
neither.
"""

from __future__ import annotations

import sys
from typing import Mapping, Sequence

from absl import app
from absl import flags
import numpy as np

from vit_jax import checkpoint
from vit_jax.checkpoint import paths
from vit_jax.models import card
from vit_jax.models import formats
from vit_jax.models import loader
from vit_jax.models.formats import detect_format
from vit_jax.models.formats import Loaded
from vit_jax.models.formats import read
from vit_jax.models.formats import write
from vit_jax.tools import parity

__all__ = ['Loaded', 'convert', 'detect_format', 'drop_head', 'read', 'write']

FlatParams = dict[str, np.ndarray]

FLAGS = flags.FLAGS


def drop_head(params: Mapping[str, np.ndarray]) -> FlatParams:
  """Removes the head and the representation layer, leaving the feature extractor."""
  return {k: v for k, v in params.items() if k.split('/')[0] not in ('head', 'pre_logits')}


def convert(source: str, target: str, *, target_format: str | None = None,
            model_name: str | None = None, num_heads: int | None = None,
            gelu_approximate: bool | None = None, remove_head: bool = False,
            overwrite: bool = False) -> tuple[Loaded, str]:
  """Reads `source` and writes it to `target`; returns (what was read, target format).

  A training export's model card and state sidecar go with it (beside the target, named after
  it), so the tools feed the converted file as the job fed the original; a headless copy gets
  neither (the card describes the head).
  """
  file = loader.read_file(source, num_heads=num_heads, model_name=model_name)
  params = drop_head(file.params) if remove_head else file.params
  if model_name is not None and file.format != 'npz':
    loader.load_model(checkpoint.unflatten(params), model_name)  # Names any misfit.
  if gelu_approximate is None:
    gelu_approximate = True if file.gelu_approximate is None else file.gelu_approximate
  fmt = write(params, target, target_format, gelu_approximate=gelu_approximate,
              overwrite=overwrite)
  if not remove_head and (file.card or file.model_state):
    card.write_sidecars(target, file.model_state, file.card)
  loaded = Loaded(params, file.format, gelu_approximate)
  return loaded, fmt


def define_flags() -> None:
  """The command's flags; defined only when run as a program, so the library imports cleanly."""
  flags.DEFINE_string('from', None, 'Source checkpoint (file, or HF folder; local, gs://..., or '
                      'a Hub name hf://ORG/REPO[/FILE], hf-hub:ORG/REPO).')
  flags.DEFINE_string('to', None, 'Target: .npz, .safetensors/.pth (timm), or a folder (HF); '
                      'local or gs://....')
  flags.DEFINE_enum('to_format', None, list(formats.FORMATS), 'Target format when the path '
                    'does not tell (e.g. a bare HF state dict as .safetensors).')
  flags.DEFINE_string('model', None, 'Zoo model name: gives the number of heads, which timm '
                      'files do not store, and is checked against the parameters.')
  flags.DEFINE_integer('num_heads', None, 'Attention heads, for models not in the zoo.')
  flags.DEFINE_enum('gelu', None, ['tanh', 'exact'],
                    "GELU form the model was trained with; written to HF configs and used by "
                    "--check. Default: the HF config's when reading HF, else tanh (the original "
                    'library).')
  flags.DEFINE_bool('drop_head', False,
                    'Drop the head and representation layer (keep the feature extractor).')
  flags.DEFINE_bool('check', False, 'Compare the outputs of the torch model (timm or '
                    'transformers) on the converted weights with ours.')
  flags.DEFINE_bool('overwrite', False, 'Replace an existing target.')


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  source, target = FLAGS['from'].value, FLAGS.to
  if not source or not target:
    raise app.UsageError('--from and --to are required')
  gelu = None if FLAGS.gelu is None else FLAGS.gelu == 'tanh'
  try:
    loaded, fmt = convert(source, target, target_format=FLAGS.to_format,
                          model_name=FLAGS.model, num_heads=FLAGS.num_heads,
                          gelu_approximate=gelu, remove_head=FLAGS.drop_head,
                          overwrite=FLAGS.overwrite)
  except (FileNotFoundError, KeyError, ValueError,  # Conversion & checkpoint errors.
          paths.MissingClientError) as e:
    sys.exit(f'convert: {e}')
  count = sum(int(np.size(v)) for v in loaded.params.values())
  print(f'{source} ({loaded.format}) -> {target} ({fmt}): {len(loaded.params)} arrays, '
        f'{count:,} parameters')
  if FLAGS.check:
    # The torch side is the target, or the source when converting to .npz.
    path, side = (target, fmt) if fmt != 'npz' else (loader.locate(source)[0], loaded.format)
    if side == 'npz':
      sys.exit('convert: --check compares with timm or HF; both sides are .npz')
    try:
      delta = parity.max_logit_difference(loaded.params, path, side,
                                          gelu_approximate=loaded.gelu_approximate)
    except ImportError as e:
      sys.exit(f'convert: --check needs torch and {"timm" if side == "timm" else "transformers"}'
               f': {e}')
    print(f'--check: max |outputs(ours) - outputs({side})| = {delta:.3g} on random inputs')


if __name__ == '__main__':
  define_flags()
  app.run(main)
