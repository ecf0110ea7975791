"""The checkpoint formats `convert` reads and writes, as a table: each detects, reads, writes.

- `npz`: the original library's `.npz` (what `checkpoint.save` writes), in any `npz.LAYOUTS`.
  One whose keys are all dotted torch names (`checkpoint.layout.is_state_dict_npz`) is a state
  dict saved with numpy: it is read as a timm state dict is, by the key map of the family whose
  map accepts its keys (Swin's reads the official and timm layouts), and refused, with its keys
  named, when none does. `checkpoint.load` reads `/`-keyed layouts only.
- `timm`: a timm state dict, `.safetensors` or `.pth`/`.pt`/`.bin`, of any family whose record
  has a timm key map (ViT and hybrids, Swin).
- `hf`: a `transformers` folder (`config.json` + `model.safetensors`), or a bare HF state dict
  when reading, of any family with an HF key map (ViT). See `models/vit/hf_keys.py` for what HF
  ViT cannot represent.

Every format reads into, and writes from, our flat parameters (original `.npz` keys). Which
family's key map applies is decided by the keys (`registry.of_state_dict`, `registry.of_params`).
Adding a format is adding a `Format` to `FORMATS`. Paths are local or object-store URLs, read and
written through `checkpoint.paths` (files atomically; an HF folder's weights, then its
`config.json`, each atomically).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Mapping, NamedTuple

import numpy as np

from vit_jax.checkpoint import files
from vit_jax.checkpoint import npz
from vit_jax.checkpoint import paths
from vit_jax.checkpoint import tree
from vit_jax.checkpoint.errors import ConversionError
from vit_jax.checkpoint.layout import is_state_dict_npz
from vit_jax.models import registry
from vit_jax.models.vit import hf_keys

FlatParams = dict[str, np.ndarray]
_HF_WEIGHTS = ('model.safetensors', 'pytorch_model.bin')


class Loaded(NamedTuple):
  """A checkpoint read into our flat layout."""
  params: FlatParams  # original `.npz` keys
  format: str
  gelu_approximate: bool | None  # None: the file does not say


@dataclasses.dataclass(frozen=True)
class Format:
  """One checkpoint format."""
  name: str
  # (path, its extension, state-dict keys when reading a state-dict file, else None; reading?)
  detect: Callable[[str, str, list[str] | None, bool], bool]
  # (path, the state dict when the path is a state-dict file, num_heads) -> Loaded
  read: Callable[[str, FlatParams | None, int | None], Loaded]
  # (flat params, path, gelu_approximate) -> None
  write: Callable[[FlatParams, str, bool], None]


# ---------------------------------------------------------------------------------------------
# npz.


def _read_npz(path: str, state: FlatParams | None, num_heads: int | None) -> Loaded:
  flat = files.read_npz(path)
  if is_state_dict_npz(list(flat)):  # A state dict saved with numpy: the npz format's rule.
    return _read_state_dict(path, flat, num_heads, 'npz')
  return Loaded(tree.flatten(npz.to_params(flat)), 'npz', None)


def _write_npz(params: FlatParams, path: str, gelu_approximate: bool) -> None:
  npz.save(tree.unflatten(params), path)


# ---------------------------------------------------------------------------------------------
# timm.


def _read_state_dict(path: str, state: FlatParams, num_heads: int | None, fmt: str) -> Loaded:
  """A torch state dict, read by the timm key map of the family that accepts its keys."""
  try:
    family = registry.of_state_dict(list(state), 'timm')
  except ValueError as e:
    raise ConversionError(
        f'{path} holds a torch state dict that no key map reads ({e}); its keys begin '
        f'{", ".join(sorted(state)[:6])} (a timm ViT has patch_embed.proj.weight and '
        'blocks.0.attn.qkv.weight)') from e
  key_map = family.timm
  return Loaded(key_map.from_state_dict(state, num_heads, None), fmt, key_map.gelu_approximate)


def _read_timm(path: str, state: FlatParams | None, num_heads: int | None) -> Loaded:
  return _read_state_dict(path, state, num_heads, 'timm')


def _write_timm(params: FlatParams, path: str, gelu_approximate: bool) -> None:
  family = registry.of_params(params)
  if family.timm is None:
    raise ConversionError(f'The {family.name} family has no timm key map')
  files.write_state_dict(family.timm.to_state_dict(params), path)


# ---------------------------------------------------------------------------------------------
# Hugging Face.


def _is_hf(path: str, ext: str, keys: list[str] | None, reading: bool) -> bool:
  if not reading:
    return not ext or path.endswith('/')
  if paths.isdir(path):
    return True
  return keys is not None and any(f.hf is not None and f.hf.matches(keys)
                                  for f in registry.FAMILIES.values())


def _read_hf_folder(path: str) -> tuple[FlatParams, dict[str, Any]]:
  """An HF folder: (state dict, config.json contents)."""
  config_path = paths.join(path, 'config.json')
  if not paths.exists(config_path):
    raise ConversionError(f'{path} is a folder without config.json: not an HF checkpoint')
  try:
    config = json.loads(paths.read_text(config_path))
  except ValueError as e:
    raise ConversionError(f'{config_path} is not readable JSON: {e}') from e
  if config.get('model_type') not in (None, 'vit'):
    raise ConversionError(f"{path} holds a {config['model_type']!r} model; only HF ViT "
                          '(model_type "vit") is supported')
  for name in _HF_WEIGHTS:
    if paths.exists(paths.join(path, name)):
      return files.read_state_dict(paths.join(path, name)), config
  raise ConversionError(f'{path} has no {" or ".join(_HF_WEIGHTS)} (sharded checkpoints are '
                        'not supported)')


def _read_hf(path: str, state: FlatParams | None, num_heads: int | None) -> Loaded:
  config: dict[str, Any] = {}
  if state is None:
    state, config = _read_hf_folder(path)
  family = registry.of_state_dict(list(state), 'hf')
  gelu = hf_keys.gelu_approximate_from_config(config) if 'hidden_act' in config else None
  return Loaded(family.hf.from_state_dict(state, num_heads, config), 'hf', gelu)


def _write_hf(params: FlatParams, path: str, gelu_approximate: bool) -> None:
  family = registry.of_params(params)
  if family.hf is None:
    raise ConversionError(f'The {family.name} family has no Hugging Face counterpart; convert '
                          'it to timm')
  from vit_jax.data import labels  # pylint: disable=g-import-not-at-top
  head = params.get('head/bias')
  names = labels.labels_for_head(len(head)) if head is not None else None
  state, config = hf_keys.to_hf(params, gelu_approximate=gelu_approximate,
                                label_names=list(names[1]) if names else None)
  if path.endswith('.safetensors'):
    files.write_state_dict(state, path)
    return
  paths.makedirs(path)
  files.write_state_dict(state, paths.join(path, 'model.safetensors'))
  paths.write_text(paths.join(path, 'config.json'), json.dumps(config, indent=2) + '\n')


# Tried in order: the first whose `detect` accepts a path is its format.
FORMATS: dict[str, Format] = {f.name: f for f in (
    Format('npz', lambda path, ext, keys, reading: ext == '.npz', _read_npz, _write_npz),
    Format('hf', _is_hf, _read_hf, _write_hf),
    Format('timm', lambda path, ext, keys, reading: ext in files.STATE_DICT_EXTENSIONS,
           _read_timm, _write_timm),
)}


# ---------------------------------------------------------------------------------------------
# Entry points.


def detect_format(path: str | os.PathLike, *, reading: bool = True,
                  keys: list[str] | None = None) -> str:
  """The name of the format of `path`, by extension (and, for state dicts read, by keys).

  Args:
    path: a file, or an HF folder.
    reading: whether the path is read (its contents then decide) or written.
    keys: the state dict's keys, when the caller has read it already.

  Raises:
    ConversionError: the path does not name one of the formats.
  """
  path = os.fspath(path)
  ext = files.extension(path)
  if reading and keys is None and ext in files.STATE_DICT_EXTENSIONS:
    keys = list(files.read_state_dict(path))
  for fmt in FORMATS.values():
    if fmt.detect(path, ext, keys, reading):
      return fmt.name
  raise ConversionError(f'Cannot tell the format of {path!r}: expected .npz, .safetensors, '
                        '.pth/.pt/.bin, or an HF folder')


def zoo_num_heads(model_name: str | None) -> int | None:
  """The attention heads of zoo model `model_name` (None for models without a transformer)."""
  if model_name is None:
    return None
  registry.of_model(model_name)  # KeyError naming the known models.
  transformer = registry.MODEL_CONFIGS[model_name].get('transformer')
  return int(transformer.num_heads) if transformer is not None else None


def read(path: str | os.PathLike, *, num_heads: int | None = None,
         model_name: str | None = None) -> Loaded:
  """Reads a checkpoint in any supported format into our flat `.npz` layout.

  Args:
    path: `.npz`, timm or HF state dict file, or HF folder.
    num_heads: attention heads, which timm state dicts do not record.
    model_name: zoo name, the other way to give the heads.

  Raises:
    FileNotFoundError: nothing at `path`.
    CheckpointError: (and its ConversionError, StateDictError) an unreadable file, or
      parameters our models cannot hold, named in the message.
  """
  path = os.fspath(path)
  state = None
  if files.extension(path) in files.STATE_DICT_EXTENSIONS and not paths.isdir(path):
    state = files.read_state_dict(path)
  fmt = detect_format(path, keys=list(state) if state is not None else None)
  return FORMATS[fmt].read(path, state, num_heads or zoo_num_heads(model_name))


def write(params: Mapping[str, np.ndarray], path: str | os.PathLike, fmt: str | None = None, *,
          gelu_approximate: bool = True, overwrite: bool = False) -> str:
  """Writes flat `.npz`-layout parameters in format `fmt` (default: from the path).

  Args:
    params: our flat parameters.
    path: target file, or folder for HF.
    fmt: a name of `FORMATS`; default: `detect_format(path, reading=False)`.
    gelu_approximate: GELU form recorded in HF configs.
    overwrite: replace an existing target instead of raising.

  Returns:
    The format written.
  """
  path = os.fspath(path)
  fmt = fmt or detect_format(path, reading=False)
  if fmt not in FORMATS:
    raise ConversionError(f'Unknown format {fmt!r}; expected one of {tuple(FORMATS)}')
  if paths.exists(path) and not overwrite:
    raise ConversionError(f'{path} exists; pass --overwrite to replace it')
  FORMATS[fmt].write(dict(params), path, gelu_approximate)
  return fmt
