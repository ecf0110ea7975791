"""Weights by name from the Hugging Face Hub: `hf://ORG/REPO[@REV][/FILE]`, `hf-hub:ORG/REPO[@REV]`.

A name is fetched with `huggingface_hub` into its cache (`HF_HOME`, `HF_HUB_CACHE`), so a second
use reads the cached copy and `HF_HUB_OFFLINE=1` works from it. `@REV` is a branch, tag or commit
(default `main`; a slash in it is written `%2F`, as in `HfFileSystem` names). What comes back
is what the one loader already reads:

- a timm repo (`config.json` with `pretrained_cfg`, e.g. `timm/vit_base_patch16_224.augreg2_
  in21k_ft_in1k`): its `model.safetensors` (or `pytorch_model.bin`), with the config's
  preprocessing and class count parsed as `TimmConfig`;
- a transformers repo (`config.json` with `model_type`, e.g. `google/vit-base-patch16-224`):
  its snapshot folder, holding `config.json` and `model.safetensors` (or `pytorch_model.bin`),
  an HF folder;
- `hf://ORG/REPO/FILE`: that file (and the repo's timm config, where it has one).

Only the files named are downloaded, never a whole repo (which may also hold TF and Flax
copies). A missing repo, revision or file is a `HubError` naming the repo, the file, and what
the repo holds (from the Hub, or from the local cache when offline).
"""

from __future__ import annotations

import dataclasses
import json
import os
import urllib.parse
from typing import Any, Mapping

from vit_jax.checkpoint import paths
from vit_jax.checkpoint.errors import CheckpointError

WEIGHT_FILES = ('model.safetensors', 'pytorch_model.bin')  # Preferred first.


class HubError(FileNotFoundError):
  """A Hub name that does not resolve: no such repo, revision or file (the message says which,
  and lists what the repo holds)."""


@dataclasses.dataclass(frozen=True)
class HubName:
  """A parsed Hub name."""
  repo_id: str  # ORG/REPO
  revision: str | None  # None: the default branch
  filename: str | None  # None: the repo's weights, found from its config.json

  def __str__(self) -> str:
    rev = '@' + urllib.parse.quote(self.revision, safe='') if self.revision else ''
    return f'hf://{self.repo_id}{rev}' + (f'/{self.filename}' if self.filename else '')


@dataclasses.dataclass(frozen=True)
class TimmConfig:
  """What a timm repo's `config.json` says about feeding its model (its `pretrained_cfg`)."""
  architecture: str  # timm's model name, e.g. 'vit_base_patch16_224'
  num_classes: int
  input_size: tuple[int, int, int]  # (channels, height, width)
  mean: tuple[float, ...]  # per channel, of pixels in [0, 1]
  std: tuple[float, ...]
  interpolation: str | None  # resize filter, e.g. 'bicubic'
  crop_pct: float | None  # eval: resize to image_size / crop_pct, then centre-crop
  label_names: tuple[str, ...] | None

  @property
  def image_size(self) -> tuple[int, int]:
    """(height, width)."""
    return self.input_size[1], self.input_size[2]

  @classmethod
  def from_config(cls, config: Mapping[str, Any], source: str = 'config.json') -> 'TimmConfig':
    """Parses a timm `config.json`.

    Raises:
      CheckpointError: a field is missing or malformed; the message names it.
    """
    cfg = config.get('pretrained_cfg')
    if not isinstance(cfg, Mapping):
      raise CheckpointError(f'{source} is not a timm config: no pretrained_cfg')
    def field(name, *where):
      for mapping in where:
        if mapping.get(name) is not None:
          return mapping[name]
      raise CheckpointError(f'{source} lacks {name}')
    try:
      input_size = tuple(int(s) for s in field('input_size', cfg, config))
      mean = tuple(float(m) for m in field('mean', cfg))
      std = tuple(float(s) for s in field('std', cfg))
      num_classes = int(field('num_classes', config, cfg))
    except (TypeError, ValueError) as e:
      raise CheckpointError(f'{source}: malformed timm config: {e}') from e
    if len(input_size) != 3 or len(mean) != input_size[0] or len(std) != input_size[0]:
      raise CheckpointError(f'{source}: input_size {input_size} (channels, height, width) does '
                            f'not fit mean {mean} and std {std}')
    labels = config.get('label_names') or cfg.get('label_names')
    crop = cfg.get('crop_pct')
    return cls(architecture=str(field('architecture', config, cfg)), num_classes=num_classes,
               input_size=input_size, mean=mean, std=std,
               interpolation=cfg.get('interpolation'),
               crop_pct=float(crop) if crop is not None else None,
               label_names=tuple(labels) if labels else None)


@dataclasses.dataclass(frozen=True)
class HubCheckpoint:
  """A fetched Hub name: where it lies in the local cache, and what it is."""
  name: HubName
  path: str  # local file, or folder for a transformers repo
  kind: str  # 'timm', 'transformers', or 'file' (a FILE named explicitly)
  commit: str | None  # the commit the revision resolved to
  timm: TimmConfig | None  # the repo's timm config, where it has one
  config: dict[str, Any] | None  # the repo's config.json, where it has one


def parse(name: str) -> HubName:
  """`hf://ORG/REPO[@REV][/FILE]` or `hf-hub:ORG/REPO[@REV][/FILE]` as a `HubName`.

  Raises:
    ValueError: not a Hub name, or not of a model repo `ORG/REPO`.
  """
  if not paths.is_hub_name(name):
    raise ValueError(f'{name!r} is not a Hub name (hf://ORG/REPO or hf-hub:ORG/REPO)')
  rest = name[len('hf://'):] if name.startswith('hf://') else name[len('hf-hub:'):]
  parts = [p for p in rest.split('/') if p]
  if len(parts) < 2 or parts[0] in ('datasets', 'spaces', 'buckets'):
    raise ValueError(f'{name!r}: expected a model repo, hf://ORG/REPO[@REVISION][/FILE]')
  repo, _, revision = parts[1].partition('@')
  return HubName(repo_id=f'{parts[0]}/{repo}',
                 revision=urllib.parse.unquote(revision) if revision else None,
                 filename='/'.join(parts[2:]) or None)


def _client() -> Any:
  try:
    import huggingface_hub  # pylint: disable=g-import-not-at-top
    import huggingface_hub.constants  # pylint: disable=g-import-not-at-top,unused-import
    import huggingface_hub.errors  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    raise paths.MissingClientError(f'Hub names need huggingface_hub: {paths.CLOUD_INSTALL}'
                                   ) from e
  return huggingface_hub


def _cached(hf: Any, name: HubName) -> tuple[list[str] | None, list[str]]:
  """The files of the cached snapshot of `name`'s revision (None where it is not cached), and
  the revisions (refs, else commits) cached for the repo."""
  try:
    cache = hf.scan_cache_dir(hf.constants.HF_HUB_CACHE)  # As hf_hub_download reads it.
  except Exception:  # pylint: disable=broad-except  # No cache folder at all.
    return None, []
  revision = name.revision or 'main'
  files, revisions = None, []
  for repo in cache.repos:
    if repo.repo_id != name.repo_id or repo.repo_type != 'model':
      continue
    for rev in repo.revisions:
      revisions += sorted(rev.refs) or [rev.commit_hash]
      if revision in rev.refs or rev.commit_hash == revision:
        root = str(rev.snapshot_path)
        files = sorted(os.path.relpath(os.path.join(folder, f), root)
                       for folder, _, names in os.walk(root) for f in names)
  return files, sorted(revisions)


def _missing(hf: Any, name: HubName, filename: str, error: Exception) -> HubError:
  """The error for `filename` missing from `name`, listing what the repo holds."""
  revision = name.revision or 'main'
  if isinstance(error, hf.errors.RepositoryNotFoundError):
    return HubError(f'{name}: no model repository {name.repo_id} on the Hugging Face Hub '
                    '(private and gated ones need a token: `hf auth login` or HF_TOKEN)')
  if isinstance(error, hf.errors.RevisionNotFoundError):
    return HubError(f'{name}: the repository {name.repo_id} has no revision {revision!r}')
  listed, where = None, 'on the Hub'
  if not hf.is_offline_mode():
    try:
      listed = sorted(hf.HfApi().list_repo_files(name.repo_id, revision=name.revision))
    except Exception:  # pylint: disable=broad-except  # No network: say what the cache holds.
      pass
  cache = hf.constants.HF_HUB_CACHE
  if listed is None:
    (listed, revisions), where = _cached(hf, name), f'in the local cache {cache}'
  if listed is None:
    held = (f'; cached revisions: {", ".join(revisions)}' if revisions
            else '; the cache holds no revision of it')
    why = ('HF_HUB_OFFLINE is set, so nothing is downloaded' if hf.is_offline_mode() else
           f'the Hub could not be reached ({type(error).__name__}: {error})')
    return HubError(f'{name}: revision {revision} of {name.repo_id} is not in the local cache '
                    f'{cache}{held}, and {why}')
  return HubError(f'{name}: the repository {name.repo_id} (revision {revision}) has no '
                  f'{filename}; {where} it holds: {", ".join(listed) or "no files"}')


def _download(hf: Any, name: HubName, *filenames: str) -> str:
  """The local path of the first of `filenames` that `name`'s repo holds."""
  for filename in filenames:
    try:
      return hf.hf_hub_download(name.repo_id, filename, revision=name.revision)
    except hf.errors.EntryNotFoundError as e:  # Remote, or local when offline.
      missing = e
    except (hf.errors.RepositoryNotFoundError, hf.errors.RevisionNotFoundError) as e:
      raise _missing(hf, name, filename, e) from e
  raise _missing(hf, name, ' or '.join(filenames), missing) from missing


def _config(hf: Any, name: HubName, required: bool) -> tuple[dict[str, Any] | None, str | None]:
  """The repo's `config.json` and its local path ((None, None) when optional and missing)."""
  try:
    path = _download(hf, name, 'config.json')
  except HubError:
    if required:
      raise
    return None, None
  try:
    with open(path, encoding='utf-8') as f:
      config = json.load(f)
  except ValueError as e:
    raise CheckpointError(f'{name}: config.json is not readable JSON: {e}') from e
  if not isinstance(config, dict):
    raise CheckpointError(f'{name}: config.json holds a {type(config).__name__}, not a mapping')
  return config, path


def _commit(path: str) -> str | None:
  parts = os.path.normpath(path).split(os.sep)
  return parts[parts.index('snapshots') + 1] if 'snapshots' in parts[:-1] else None


def fetch(name: str) -> HubCheckpoint:
  """Downloads (or finds in the cache) what Hub name `name` denotes; see the module docstring.

  Raises:
    HubError: no such repo, revision or file (a FileNotFoundError).
    CheckpointError: the repo's config.json is unreadable, or is neither timm's nor
      transformers'.
    MissingClientError: huggingface_hub is not installed.
  """
  hub_name, hf = parse(name), _client()
  if hub_name.filename:
    path = _download(hf, hub_name, hub_name.filename)
    config, _ = _config(hf, hub_name, required=False)
    timm = TimmConfig.from_config(config, f'{hub_name}: config.json') if (
        config and 'pretrained_cfg' in config) else None
    return HubCheckpoint(hub_name, path, 'file', _commit(path), timm, config)
  config, config_path = _config(hf, hub_name, required=True)
  if 'pretrained_cfg' in config:
    kind = 'timm'
  elif 'model_type' in config:
    kind = 'transformers'
  else:
    raise CheckpointError(f'{hub_name}: config.json has neither pretrained_cfg (timm) nor '
                          'model_type (transformers); name the weights file: '
                          f'hf://{hub_name.repo_id}/FILE')
  weights = _download(hf, hub_name, *WEIGHT_FILES)
  timm = TimmConfig.from_config(config, f'{hub_name}: config.json') if kind == 'timm' else None
  # transformers: both files sit in one snapshot folder, the HF folder the loader reads.
  path = weights if kind == 'timm' else os.path.dirname(config_path)
  return HubCheckpoint(hub_name, path, kind, _commit(weights), timm, config)


def resolve(path: str | os.PathLike) -> str:
  """A local path or storage URL for any checkpoint path: Hub names fetched (`fetch`), every
  other path returned as it is."""
  path = os.fspath(path)
  return fetch(path).path if paths.is_hub_name(path) else path
