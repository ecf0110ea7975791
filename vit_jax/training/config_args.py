"""The one parser of `--config=configs/FILE.py:ARGS` argument strings (no TensorFlow).

Every config's `get_config(arg)` declares its arguments with their defaults and calls
`parse_arg(arg, name=default, ...)`. ARGS is comma-separated:

- `key=value` sets an argument by name;
- a bare word that names a boolean argument sets it to True (`cifar10_scratch.py:quick`);
- any other bare word is positional: it fills the next non-boolean argument in declaration
  order (`finetune.py:ViT-B_16,cifar10` is `model=ViT-B_16,dataset=cifar10`);
- `evals=NAME[:TYPE]+...`, which every config takes, adds evaluators to `config.evals`
  (`base_config.finish`; classification where no TYPE is given), declared with every field of
  their type so that `--config.evals.NAME.FIELD=...` sets them: ml_collections' command line
  sets fields, it cannot add them
  (`cifar10_scratch.py:quick,evals=minival --config.evals.minival.split=train[:500]`).

Values take the type of their default (bool, int, float or str). A default given as a type
(`model=str`) makes the argument required. Unknown keys, extra positionals, missing required
arguments and values of the wrong type are a `ValueError` naming the argument and the known ones.

`check_removed_overrides` (the `flags_parser` of the commands) turns a command-line override of a
removed field (`--config.eval_every=200`) into an error naming what replaced it.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from typing import Any, Sequence

from absl import app
import ml_collections

from vit_jax.training import base_config
from vit_jax.training import settings

_TRUE = ('true', 'yes', '1')
_FALSE = ('false', 'no', '0')
EVALS = 'evals'  # The argument every config takes: evaluators to add.
_EVALUATOR_SPEC = re.compile(r'^[A-Za-z_]\w*(:\w+)?$')


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
  if EVALS in spec:
    raise ValueError(f'{EVALS!r} is the config argument every config takes; name yours otherwise')
  known = (f'known: {", ".join(spec)}; the config takes {usage(spec)!r} or key=value, and '
           f'{EVALS}=NAME[:TYPE]+...')
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
    if eq and key == EVALS:
      assign(key, _evaluator_specs(value.strip(), arg))
    elif eq:
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
      {**{k: values.get(k, False if v is bool else v) for k, v in spec.items()},
       EVALS: values.get(EVALS, ())})


def _evaluator_specs(value: str, arg: str | None) -> tuple[str, ...]:
  """'minival+probe:fewshot' -> ('minival', 'probe:fewshot'), each checked as NAME[:TYPE]."""
  specs = tuple(v.strip() for v in value.split('+'))
  for spec in specs:
    if not _EVALUATOR_SPEC.match(spec):
      raise ValueError(f'Bad {EVALS}={value!r} in {arg!r}: expected NAME[:TYPE]+..., NAME an '
                       f'identifier and TYPE one of {", ".join(base_config.EVALUATOR_TYPES)}')
  return specs


def check_removed_overrides(argv: Sequence[str]) -> None:
  """Checks that no `--config.FIELD` override in `argv` sets a removed field.

  Raises:
    ValueError: naming the field and what replaced it (ml_collections would only say that the
      field does not exist).
  """
  for token in argv[1:]:
    match = re.match(r'^--config\.(\w+)', token)
    if match and match.group(1) in settings.REMOVED_FIELDS:
      specs = [t.split('=', 1)[1] for t in argv[1:] if t.startswith('--config=')]
      evals = load_config(specs[-1]).evals if specs else {}
      raise ValueError('--' + settings.removed_field_error(match.group(1), evals))


def flags_parser(argv: list[str]) -> list[str]:
  """absl's flag parsing after `check_removed_overrides`, for `app.run(main, flags_parser=...)`."""
  try:
    check_removed_overrides(argv)
  except ValueError as e:
    sys.exit(f'FATAL Flags parsing error: {e}')
  return app.parse_flags_with_usage(argv)


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
