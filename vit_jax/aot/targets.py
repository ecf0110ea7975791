"""Named accelerator targets and their compile-only devices (no hardware needed).

TPUs go by their Cloud names: `v4-N` and `v5p-N` count TensorCores (2 per chip, one JAX device
per chip in megacore mode), `v5e-N` and `v6e-N` count chips (one TensorCore each). NVIDIA nodes
are `a100-N`, `h100-N`, `h200-N`, `b200-N` with N GPUs per node. A suffix `xK` asks for K slices
(TPU) or K nodes (GPU), e.g. `v5e-256x2`, `h100-8x4`.

The devices come from `jax.experimental.topologies.get_topology_desc`: libtpu (extra `tpu`)
describes TPU slices, the CUDA plugin (extra `cuda`) describes GPUs from the target specs shipped
in `vit_jax/aot/targets/*.txtpb`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
from typing import Any

from vit_jax.benchmarking import flops as flops_lib

GIB = 2**30

# Per chip: (topology prefix, TensorCores per Cloud count unit, HBM bytes, device kind for the
# peak FLOP/s table). Vendor figures (Cloud TPU system architecture pages).
_TPUS = {
    'v4': ('v4', 2, 32 * GIB),
    'v5p': ('v5', 2, 95 * GIB),
    'v5e': ('v5e', 1, 16 * GIB),
    'v6e': ('v6e', 1, 32 * GIB),
}
# Chips -> physical shape: 3D tori (v4, v5p) and 2D (v5e, v6e), the shapes Cloud slices come in.
_SHAPES_3D = {1: (1, 1, 1), 2: (1, 2, 1), 4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4),
              32: (2, 4, 4), 64: (4, 4, 4), 128: (4, 4, 8), 192: (4, 4, 12), 256: (4, 8, 8),
              384: (4, 8, 12), 512: (8, 8, 8), 768: (8, 8, 12), 1024: (8, 8, 16),
              1536: (8, 12, 16), 2048: (8, 16, 16), 3072: (12, 16, 16), 4096: (16, 16, 16)}
_SHAPES_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8),
              128: (8, 16), 256: (16, 16)}
_GPUS = ('a100', 'h100', 'h200', 'b200')
# A GPU process preallocates this fraction of memory by default (XLA_PYTHON_CLIENT_MEM_FRACTION);
# a step that needs more than that does not run with default settings.
_GPU_MEM_FRACTION = 0.75
# Deviceless GPU compiles cannot autotune, and Triton GEMM tiling needs autotuning ("Couldn't
# find output tile sizes"): cuBLAS GEMMs compile without it.
GPU_COMPILER_OPTIONS = {'xla_gpu_enable_triton_gemm': False, 'xla_gpu_autotune_level': 0}


class MissingExtraError(RuntimeError):
  """The optional dependency a target needs is not installed."""


@dataclasses.dataclass(frozen=True)
class Target:
  """A parsed target name.

  Attributes:
    name: as given, e.g. 'v5e-8' or 'h100-8x2'.
    platform: 'tpu' or 'gpu'.
    family: 'v4', 'v5p', 'v5e', 'v6e', 'a100', 'h100', 'h200' or 'b200'.
    per_slice: chips per slice (TPU) or GPUs per node.
    slices: slices (TPU) or nodes (GPU).
  """
  name: str
  platform: str
  family: str
  per_slice: int
  slices: int = 1

  @property
  def num_devices(self) -> int:
    return self.per_slice * self.slices


def parse(name: str) -> Target:
  """`Target` of a name like 'v5e-8', 'v4-32', 'v5p-128x2', 'h100-8', 'h200-8x4'."""
  m = re.fullmatch(r'([a-z0-9]+)-(\d+)(?:x(\d+))?', name.strip().lower())
  if not m:
    raise ValueError(f'Unknown target {name!r}; expected e.g. v5e-8, v4-32, v5p-128, h100-8, '
                     'h100-8x2 (nodes) or v5e-256x2 (slices)')
  family, count, slices = m.group(1), int(m.group(2)), int(m.group(3) or 1)
  if family in _TPUS:
    cores = _TPUS[family][1]
    if count % cores:
      raise ValueError(f'{name}: {family}-N counts TensorCores, {cores} per chip')
    chips = count // cores
    shapes = _SHAPES_3D if cores == 2 else _SHAPES_2D
    if chips not in shapes:
      raise ValueError(f'{name}: no {family} slice of {chips} chips; known sizes: '
                       f'{", ".join(f"{family}-{c * cores}" for c in shapes)}')
    return Target(name, 'tpu', family, chips, slices)
  if family in _GPUS:
    if count < 1:
      raise ValueError(f'{name}: at least one GPU per node')
    return Target(name, 'gpu', family, count, slices)
  raise ValueError(f'Unknown target family {family!r} in {name!r}; known: '
                   f'{", ".join(list(_TPUS) + list(_GPUS))}')


def spec_path(family: str) -> str:
  """The GpuTargetConfigProto text file shipped for a GPU family."""
  return os.path.join(os.path.dirname(os.path.abspath(__file__)), 'targets', f'{family}.txtpb')


def gpu_memory_bytes(family: str) -> int:
  """`device_memory_size` of the GPU's target spec."""
  with open(spec_path(family), encoding='utf-8') as f:
    return int(re.search(r'device_memory_size:\s*(\d+)', f.read()).group(1))


def device_memory_bytes(target: Target) -> int:
  """Memory of one device: TPU HBM per chip, GPU memory per GPU (vendor and spec figures)."""
  if target.platform == 'tpu':
    return _TPUS[target.family][2]
  return gpu_memory_bytes(target.family)


def usable_memory_bytes(target: Target) -> int | None:
  """Bytes a step may use per device, or None where the compiler itself says (TPU: XLA fails a
  program that exceeds HBM). GPUs: JAX's default preallocation (XLA_PYTHON_CLIENT_MEM_FRACTION)."""
  if target.platform == 'tpu':
    return None
  fraction = float(os.environ.get('XLA_PYTHON_CLIENT_MEM_FRACTION', _GPU_MEM_FRACTION))
  return int(device_memory_bytes(target) * fraction)


def peak_flops(device: Any) -> float | None:
  """Dense bf16 peak FLOP/s of one device (see `vit_jax.benchmarking.flops`)."""
  return flops_lib.peak_flops(device)


def require_extra(target: Target) -> None:
  """Raises `MissingExtraError` naming the install command when the target's extra is absent."""
  module, extra = ('libtpu', 'tpu') if target.platform == 'tpu' else ('jax_plugins.xla_cuda12',
                                                                      'cuda')
  try:
    found = importlib.util.find_spec(module) is not None
  except ModuleNotFoundError:
    found = False
  if not found:
    raise MissingExtraError(
        f'Compiling for {target.name} needs the {extra!r} extra ({module} is not installed): '
        f'pip install -e ".[{extra}]"  (or pip install "vit_jax[{extra}]")')


def devices(target: Target) -> list[Any]:
  """The target's compile-only devices, slices (nodes) outermost."""
  require_extra(target)
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  if target.platform == 'tpu':
    # libtpu locks /tmp/libtpu_lockfile against a second process on the same TPU; compile-only
    # topologies touch no TPU, so parallel compiles (pytest -n, a sweep) may share the machine.
    os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
    prefix, cores, _ = _TPUS[target.family]
    shape = (_SHAPES_3D if cores == 2 else _SHAPES_2D)[target.per_slice]
    # Full cubes and 16-chip rings are tori; megacore (one device per chip) on v4 and v5p.
    wrap = tuple(d >= (4 if len(shape) == 3 else 16) for d in shape)
    wrap = wrap if any(wrap) and (len(shape) == 2 or all(wrap)) else (False,) * len(shape)
    wrap += (False,) * (3 - len(wrap))  # libtpu wants three entries, 2D slices too.
    per_host = (1, 1, 1) if target.per_slice == 1 else (2, 2, 1)
    topology = topologies.get_topology_desc(
        platform='tpu', topology_name=f'{prefix}:{"x".join(map(str, shape))}',
        chip_config_name='megacore' if cores == 2 else 'default',
        chips_per_host_bounds=per_host, num_slices=target.slices, wrap=wrap)
  else:
    with open(spec_path(target.family), encoding='utf-8') as f:
      config = f.read()
    topology = topologies.get_topology_desc(
        platform='cuda', topology_name='', target_config=config,
        topology=f'{target.slices}x1x{target.per_slice}')
  found = list(topology.devices)
  if len(found) != target.num_devices:
    raise RuntimeError(f'{target.name}: the topology has {len(found)} devices, expected '
                       f'{target.num_devices} (one per chip or GPU)')
  return found

