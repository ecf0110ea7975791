"""The one parser of `--config=configs/FILE.py:ARGS` argument strings (no TensorFlow).

Every config's `get_config(arg)` declares its arguments with their defaults and calls
`parse_arg(arg, name=default, ...)`. ARGS is comma-separated:

- `key=value` sets an argument by name;
- a bare word that names a boolean argument sets it to True (`cifar10_scratch.py:quick`);
- any other bare word is positional: it fills the next non-boolean argument in declaration
  order (`finetune.py:ViT-B_16,cifar10` is `model=ViT-B_16,dataset=cifar10`).

Values take the type of their default (bool, int, float or str). A default given as a type
(`model=str`) makes the argument required. Unknown keys, extra positionals, missing required
arguments and values of the wrong type are a `ValueError` naming the argument and the known ones.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import ml_collections

_TRUE = ('true', 'yes', '1')
_FALSE = ('false', 'no', '0')


def _is_flag(default: Any) -> bool:
  return default is bool or isinstance(default, bool)


def _is_required(default: Any) -> bool:
  return isinstance(default, type) and default is not bool


def usage(spec: dict[str, Any]) -> str:
  """The argument string a config takes, e.g. 'MODEL,DATASET[,bv]': required positionals in
  capitals, optional ones and flags in brackets."""
  text = ''
  for key, default in spec.items():
    name = key if _is_flag(default) else key.upper()
    sep = ',' if text else ''
    text += sep + name if _is_required(default) else f'[{sep}{name}]'
  return text


def _coerce(key: str, value: str, default: Any) -> Any:
  kind = default if isinstance(default, type) else type(default)
  if kind is bool:
    if value.lower() in _TRUE + _FALSE:
      return value.lower() in _TRUE
  else:
    try:
      return kind(value)
    except ValueError:
      pass
  raise ValueError(f'Config argument {key}={value!r} is not of type {kind.__name__}')


def parse_arg(arg: str | None, **spec: Any) -> ml_collections.ConfigDict:
  """`arg` (see the module docstring) as a ConfigDict with one field per argument of `spec`.

  Args:
    arg: the string after `FILE.py:` ('' or None: every default).
    **spec: argument name -> default value (its type is the argument's type), or a type for a
      required argument. Declaration order is the positional order.

  Raises:
    ValueError: an unknown key, an argument given twice, more positionals than arguments, a
      missing required argument or a value that does not convert to the default's type.
  """
  known = f'known: {", ".join(spec)}; the config takes {usage(spec)!r} or key=value'
  values: dict[str, Any] = {}

  def assign(key: str, value: Any) -> None:
    if key in values:
      raise ValueError(f'Config argument {key!r} given twice in {arg!r}')
    values[key] = value

  positional = [k for k, v in spec.items() if not _is_flag(v)]
  for token in (arg or '').split(','):
    token = token.strip()
    if not token:
      continue
    key, eq, value = token.partition('=')
    key = key.strip()
    if eq:
      if key not in spec:
        raise ValueError(f'Unknown config argument {key!r} in {arg!r}; {known}')
      assign(key, _coerce(key, value.strip(), spec[key]))
    elif token in spec and _is_flag(spec[token]):
      assign(token, True)
    else:
      free = [k for k in positional if k not in values]
      if not free:
        raise ValueError(f'Unexpected config argument {token!r} in {arg!r}; {known}')
      assign(free[0], _coerce(free[0], token, spec[free[0]]))

  missing = [k for k, v in spec.items() if _is_required(v) and k not in values]
  if missing:
    raise ValueError(f'Config argument {missing[0]!r} missing from {arg!r}; {known}')
  return ml_collections.ConfigDict(
      {k: values.get(k, False if v is bool else v) for k, v in spec.items()})


def config_module(path: str) -> Any:
  """The experiment config file at `path`, imported by path (config files are not a package)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'Config file not found: {path!r}')
  spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_config(spec: str) -> ml_collections.ConfigDict:
  """The config `FILE.py[:ARGS]` names, loaded by path as `--config=FILE.py:ARGS` loads it."""
  path, _, arg = spec.partition(':')
  module = config_module(path)
  return module.get_config(arg) if arg else module.get_config()
