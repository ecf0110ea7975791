r"""Converts checkpoints between the original `.npz`, timm and Hugging Face formats.

  python -m vit_jax.convert --from=ViT-B_16.npz --to=vit_b16.safetensors        # -> timm
  python -m vit_jax.convert --from=vit_b16.safetensors --to=ViT-B_16.npz --check
  python -m vit_jax.convert --from=ViT-B_16.npz --to=hf_vit_b16/                 # -> transformers

Formats, told apart by extension and, for torch files, by their keys:

- `npz`: the original library's `.npz` (what `checkpoint.save` writes); ViT, hybrid, and what
  other layouts `checkpoint` registers.
- `timm`: a timm `VisionTransformer` state dict, `.safetensors` or `.pth`/`.pt`/`.bin` (ViT,
  hybrid R+ViT, MAP pooling). Swin goes through `vit_jax.swin_convert`.
- `hf`: a `transformers` ViT folder (`config.json` + `model.safetensors`), or a bare HF state dict
  when reading. See `convert_hf` for what HF ViT cannot represent.

Converting is exact: arrays are only transposed and reshaped, so a round trip returns the same
bits. `--check` builds the torch model of the other side (timm or transformers, with torch
installed) and reports the largest logit difference against ours on random inputs. torch and
transformers are imported only for `.pth` files and `--check`; `.npz` <-> `.safetensors` needs
neither.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Mapping, NamedTuple, Sequence

from absl import app
from absl import flags
import numpy as np

from vit_jax import checkpoint
from vit_jax import convert_hf
from vit_jax import convert_timm
from vit_jax import parity
from vit_jax import state_dict_io
from vit_jax.convert_timm import ConversionError

FlatParams = dict[str, np.ndarray]
FORMATS = ('npz', 'timm', 'hf')
_HF_WEIGHTS = ('model.safetensors', 'pytorch_model.bin')

FLAGS = flags.FLAGS


class Loaded(NamedTuple):
  """A checkpoint read into our flat layout."""
  params: FlatParams  # original `.npz` keys
  format: str
  gelu_approximate: bool | None  # None: the file does not say


# ---------------------------------------------------------------------------------------------
# Reading.


def detect_format(path: str | os.PathLike, *, reading: bool = True) -> str:
  """'npz', 'timm' or 'hf' for a path, by extension (and, for state dicts read, by keys).

  Raises:
    ConversionError: the path does not name one of the formats.
  """
  path = os.fspath(path)
  ext = os.path.splitext(path.rstrip('/'))[1].lower()
  if ext == '.npz':
    return 'npz'
  if reading and os.path.isdir(path):
    if not os.path.exists(os.path.join(path, 'config.json')):
      raise ConversionError(f'{path} is a folder without config.json: not an HF checkpoint')
    return 'hf'
  if ext == '.safetensors' or ext in state_dict_io.TORCH_EXTENSIONS:
    if reading and convert_hf.is_hf_vit(list(state_dict_io.read_state_dict(path))):
      return 'hf'
    return 'timm'
  if not reading and (not ext or path.endswith('/')):
    return 'hf'
  raise ConversionError(f'Cannot tell the format of {path!r}: expected .npz, .safetensors, '
                        '.pth/.pt/.bin, or an HF folder')


def _read_hf(path: str) -> tuple[FlatParams, dict[str, Any]]:
  """An HF folder: (state dict, config.json contents)."""
  if not os.path.exists(os.path.join(path, 'config.json')):
    raise ConversionError(f'{path} is a folder without config.json: not an HF checkpoint')
  with open(os.path.join(path, 'config.json'), encoding='utf-8') as f:
    config = json.load(f)
  if config.get('model_type') not in (None, 'vit'):
    raise ConversionError(f"{path} holds a {config['model_type']!r} model; only HF ViT "
                          '(model_type "vit") is supported')
  for name in _HF_WEIGHTS:
    if os.path.exists(os.path.join(path, name)):
      return state_dict_io.read_state_dict(os.path.join(path, name)), config
  raise ConversionError(f'{path} has no {" or ".join(_HF_WEIGHTS)} (sharded checkpoints are '
                        'not supported)')


def _heads_for(hidden: int, num_heads: int | None, model_name: str | None) -> int:
  if num_heads:
    return num_heads
  if model_name:
    from vit_jax import models  # pylint: disable=g-import-not-at-top
    config = models.MODEL_CONFIGS.get(model_name)
    if config is None:
      models.model_class(model_name)  # KeyError naming the known models.
    if 'transformer' in config:
      return int(config.transformer.num_heads)
  return convert_timm.default_num_heads(hidden)


def _swin_convert():
  """The Swin state-dict converter, which lives with the Swin model."""
  from vit_jax import swin_convert  # pylint: disable=g-import-not-at-top
  return swin_convert


def _is_swin(keys: Sequence[str]) -> bool:
  """Whether state-dict keys or our flat parameter paths are a Swin Transformer's."""
  return any(k.endswith('relative_position_bias_table') for k in keys)


def read(path: str | os.PathLike, *, num_heads: int | None = None,
         model_name: str | None = None) -> Loaded:
  """Reads a checkpoint in any supported format into our flat `.npz` layout.

  Args:
    path: `.npz`, timm or HF state dict file, or HF folder.
    num_heads: attention heads, which timm state dicts do not record.
    model_name: zoo name, the other way to give the heads.

  Raises:
    FileNotFoundError: nothing at `path`.
    ValueError: (ConversionError, CheckpointError, StateDictError) an unreadable file, or
      parameters our models cannot hold, named in the message.
  """
  path = os.fspath(path)
  ext = os.path.splitext(path.rstrip('/'))[1].lower()
  if ext == '.npz':
    return Loaded(checkpoint.flatten(checkpoint.load(path)), 'npz', None)
  if os.path.isdir(path):
    state, config = _read_hf(path)
  elif ext == '.safetensors' or ext in state_dict_io.TORCH_EXTENSIONS:
    state, config = state_dict_io.read_state_dict(path), None
  else:
    raise ConversionError(f'Cannot tell the format of {path!r}: expected .npz, .safetensors, '
                          '.pth/.pt/.bin, or an HF folder')
  if config is not None or convert_hf.is_hf_vit(list(state)):
    config = dict(config or {})
    if num_heads or model_name:  # Given explicitly: overrides the config's.
      hidden = next(np.shape(v)[0] for k, v in state.items()
                    if k.endswith('patch_embeddings.projection.weight'))
      config['num_attention_heads'] = _heads_for(hidden, num_heads, model_name)
    gelu = convert_hf.gelu_approximate_from_config(config) if 'hidden_act' in config else None
    return Loaded(convert_hf.from_hf(state, config), 'hf', gelu)
  if _is_swin(list(state)):  # Swin uses the exact GELU.
    return Loaded(checkpoint.flatten(_swin_convert().from_state_dict(state)), 'timm', False)
  if not convert_timm.is_timm_vit(list(state)):
    raise ConversionError(f'{path} is not a timm ViT state dict (no patch_embed.proj.weight / '
                          'blocks.0.attn.qkv.weight)')
  hidden = state['patch_embed.proj.weight'].shape[0]
  return Loaded(convert_timm.from_timm(state, _heads_for(hidden, num_heads, model_name)), 'timm',
                None)


def _prepare_target(path: str, overwrite: bool) -> None:
  if os.path.exists(path) and not overwrite:
    raise ConversionError(f'{path} exists; pass --overwrite to replace it')
  folder = os.path.dirname(os.path.abspath(path.rstrip('/')))
  os.makedirs(folder, exist_ok=True)


def write(params: Mapping[str, np.ndarray], path: str | os.PathLike, fmt: str | None = None, *,
          gelu_approximate: bool = True, overwrite: bool = False) -> str:
  """Writes flat `.npz`-layout parameters in format `fmt` (default: from the path).

  Args:
    params: our flat parameters.
    path: target file, or folder for HF.
    fmt: 'npz', 'timm' or 'hf'; default: `detect_format(path, reading=False)`.
    gelu_approximate: GELU form recorded in HF configs.
    overwrite: replace an existing target instead of raising.

  Returns:
    The format written.
  """
  path = os.fspath(path)
  fmt = fmt or detect_format(path, reading=False)
  if fmt not in FORMATS:
    raise ConversionError(f'Unknown format {fmt!r}; expected one of {FORMATS}')
  _prepare_target(path, overwrite)
  params = dict(params)
  if fmt == 'npz':
    checkpoint.save(checkpoint.unflatten(params), path)
  elif fmt == 'timm':
    if _is_swin(list(params)):
      state = _swin_convert().to_state_dict(checkpoint.unflatten(params))
    else:
      state = convert_timm.to_timm(params)
    state_dict_io.write_state_dict(state, path)
  elif _is_swin(list(params)):
    raise ConversionError('Swin converts to timm (and the official layout), not to HF ViT')
  else:
    from vit_jax import labels  # pylint: disable=g-import-not-at-top
    head = params.get('head/bias')
    names = labels.labels_for_head(len(head)) if head is not None else None
    state, config = convert_hf.to_hf(params, gelu_approximate=gelu_approximate,
                                     label_names=list(names[1]) if names else None)
    if path.endswith('.safetensors'):
      state_dict_io.write_state_dict(state, path)
    else:
      os.makedirs(path, exist_ok=True)
      state_dict_io.write_state_dict(state, os.path.join(path, 'model.safetensors'))
      with open(os.path.join(path, 'config.json'), 'w', encoding='utf-8') as f:
        json.dump(config, f, indent=2)
        f.write('\n')
  return fmt


def drop_head(params: Mapping[str, np.ndarray]) -> FlatParams:
  """Removes the head and the representation layer, leaving the feature extractor."""
  return {k: v for k, v in params.items() if k.split('/')[0] not in ('head', 'pre_logits')}


# ---------------------------------------------------------------------------------------------
# Command line.


def convert(source: str, target: str, *, target_format: str | None = None,
            model_name: str | None = None, num_heads: int | None = None,
            gelu_approximate: bool | None = None, remove_head: bool = False,
            overwrite: bool = False) -> tuple[Loaded, str]:
  """Reads `source` and writes it to `target`; returns (what was read, target format)."""
  loaded = read(source, num_heads=num_heads, model_name=model_name)
  params = drop_head(loaded.params) if remove_head else loaded.params
  if model_name is not None and loaded.format != 'npz':
    from vit_jax import from_checkpoint  # pylint: disable=g-import-not-at-top
    from_checkpoint.load_model(checkpoint.unflatten(params), model_name)  # Names any misfit.
  if gelu_approximate is None:
    gelu_approximate = True if loaded.gelu_approximate is None else loaded.gelu_approximate
  fmt = write(params, target, target_format, gelu_approximate=gelu_approximate,
              overwrite=overwrite)
  return loaded._replace(params=params, gelu_approximate=gelu_approximate), fmt


def define_flags() -> None:
  """The command's flags; defined only when run as a program, so the library imports cleanly."""
  flags.DEFINE_string('from', None, 'Source checkpoint (file, or HF folder).')
  flags.DEFINE_string('to', None, 'Target: .npz, .safetensors/.pth (timm), or a folder (HF).')
  flags.DEFINE_enum('to_format', None, FORMATS, 'Target format when the path does not tell '
                    '(e.g. a bare HF state dict as .safetensors).')
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
  except (FileNotFoundError, KeyError, ValueError) as e:  # Conversion & checkpoint errors.
    sys.exit(f'convert: {e}')
  count = sum(int(np.size(v)) for v in loaded.params.values())
  print(f'{source} ({loaded.format}) -> {target} ({fmt}): {len(loaded.params)} arrays, '
        f'{count:,} parameters')
  if FLAGS.check:
    # The torch side is the target, or the source when converting to .npz.
    path, side = (target, fmt) if fmt != 'npz' else (source, loaded.format)
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
