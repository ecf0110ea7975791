"""Device mesh and sharding rules: how parameters, optimizer state and batches lie on devices.

Everything goes through `jax.jit` with `NamedSharding`s (pjit); there is no hand-written
communication. Rules are data, `config.sharding_rules`: (regex, spec) pairs matched with
`re.search` against the '/'-joined path of every leaf of the train state (optimizer-state paths
contain the parameter path, so one rule covers a parameter and its moments). The first match wins;
unmatched leaves are replicated. A spec is
  - a tuple with one mesh axis name (or None, or a tuple of names) per dimension;
  - 'replicate';
  - 'fsdp', 'fsdp:AXIS' or 'fsdp:AXIS:MIN_SIZE': split the largest dimension divisible by the
    axis size over AXIS (default 'data') when the leaf has at least MIN_SIZE elements (default
    2**14), else replicate (ZeRO-3 / FSDP).
The batch is split over every mesh axis except 'model'.
"""

from __future__ import annotations

import math
import re
from typing import Any, Sequence

from absl import logging
import jax
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

_FSDP_MIN_SIZE = 2**14


def make_mesh(axes: Sequence[tuple[str, int]], devices: Sequence[jax.Device] | None = None
              ) -> Mesh:
  """A mesh over all devices (or `devices`); one size may be -1 for "the remaining devices"."""
  devices = list(devices if devices is not None else jax.devices())
  names = tuple(str(name) for name, _ in axes)
  sizes = [int(size) for _, size in axes]
  if len(set(names)) != len(names):
    raise ValueError(f'config.mesh repeats an axis name: {names}')
  if sizes.count(-1) > 1:
    raise ValueError(f'config.mesh may leave only one axis size as -1, got {list(axes)}')
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f'config.mesh {list(axes)}: {len(devices)} devices are not divisible by '
                       f'{known}')
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise ValueError(f'config.mesh {list(axes)} needs {math.prod(sizes)} devices, there are '
                     f'{len(devices)}')
  grid = mesh_utils.create_device_mesh(sizes, devices=devices, allow_split_physical_axes=True)
  return Mesh(grid, names)


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
  return tuple(name for name in mesh.axis_names if name != 'model')


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over all non-'model' axes."""
  return NamedSharding(mesh, P(batch_axes(mesh)))


def activation_rules(mesh: Mesh) -> tuple[tuple[str, Any], ...]:
  """Flax logical-axis rules for activations: batch over the batch axes, the rest whole."""
  return (('batch', batch_axes(mesh)), ('length', None), ('embed', None))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_size_per_unit(mesh: Mesh) -> int:
  """How many ways the batch is split: global batches must be divisible by this."""
  return math.prod(mesh.shape[a] for a in batch_axes(mesh))


def _fsdp_spec(shape: tuple[int, ...], mesh: Mesh, axis: str, min_size: int) -> P:
  if axis not in mesh.shape:
    raise ValueError(f'Sharding rule uses mesh axis {axis!r}, not in the mesh {dict(mesh.shape)}')
  size = mesh.shape[axis]
  if size == 1 or math.prod(shape) < min_size:
    return P()
  candidates = [d for d in np.argsort(shape)[::-1] if shape[d] % size == 0]
  if not candidates:
    return P()
  spec = [None] * len(shape)
  spec[int(candidates[0])] = axis
  return P(*spec)


def spec_for(path: str, shape: tuple[int, ...], mesh: Mesh,
             rules: Sequence[tuple[str, Any]]) -> P:
  """The PartitionSpec the first matching rule gives a leaf of `shape` at `path`."""
  for pattern, spec in rules:
    if not re.search(pattern, path):
      continue
    if isinstance(spec, str):
      if spec == 'replicate':
        return P()
      parts = spec.split(':')
      if parts[0] != 'fsdp' or len(parts) > 3:
        raise ValueError(f'Unknown sharding spec {spec!r} for rule {pattern!r}; expected '
                         "'replicate', 'fsdp', 'fsdp:AXIS' or 'fsdp:AXIS:MIN_SIZE'")
      axis = parts[1] if len(parts) > 1 else 'data'
      min_size = int(parts[2]) if len(parts) > 2 else _FSDP_MIN_SIZE
      return _fsdp_spec(shape, mesh, axis, min_size)
    spec = tuple(spec)
    if len(spec) > len(shape):
      raise ValueError(f'Sharding rule {pattern!r} gives {spec} to {path} of shape {shape}')
    for dim, axes in zip(shape, spec):
      names = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
      if dim % math.prod(mesh.shape[a] for a in names):
        raise ValueError(f'Sharding rule {pattern!r}: {path} of shape {shape} is not divisible '
                         f'by mesh axes {spec}')
    return P(*spec)
  return P()


def path_str(path: tuple[Any, ...]) -> str:
  """'/'-joined names of a jax.tree_util key path."""
  parts = []
  for key in path:
    for attr in ('key', 'name', 'idx'):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return '/'.join(parts)


def tree_shardings(tree: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]]) -> Any:
  """NamedShardings for every leaf of `tree` (arrays or ShapeDtypeStructs)."""
  def leaf(path, x):
    return NamedSharding(mesh, spec_for(path_str(path), tuple(np.shape(x)), mesh, rules))
  return jax.tree_util.tree_map_with_path(leaf, tree)


def report(tree: Any, shardings: Any, min_size: int = 2**16) -> str:
  """A table of how every leaf with at least `min_size` elements is sharded."""
  lines = [f'{"path":<72} {"shape":<20} {"spec":<28} per-device']
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  flat_shardings = jax.tree.leaves(shardings, is_leaf=lambda s: isinstance(s, NamedSharding))
  for (path, x), sharding in zip(flat, flat_shardings):
    shape = tuple(np.shape(x))
    if math.prod(shape) < min_size:
      continue
    local = sharding.shard_shape(shape)
    lines.append(f'{path_str(path):<72} {str(shape):<20} {str(sharding.spec):<28} {local}')
  text = '\n'.join(lines)
  logging.info('Sharding of large tensors:\n%s', text)
  return text


def gather(tree: Any) -> Any:
  """Fully replicated host-side copies of (possibly sharded, multi-process) arrays."""
  if jax.process_count() == 1:
    return tree
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return multihost_utils.process_allgather(tree, tiled=True)
