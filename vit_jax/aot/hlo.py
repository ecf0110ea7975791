"""What a compiled program holds, read from its optimized HLO text.

Collectives (per kind: ops, how often they run per step, bytes moved, and how many sit inside the
gradient-accumulation loop) and cuDNN fused attention kernels. XLA's own cost analysis counts a
loop body once, so loop trip counts are read here from the while ops' `known_trip_count`.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from typing import Any

COLLECTIVES = ('all-reduce', 'all-gather', 'reduce-scatter', 'all-to-all', 'collective-permute')
_BYTES = {'pred': 1, 's8': 1, 'u8': 1, 's16': 2, 'u16': 2, 'f16': 2, 'bf16': 2, 's32': 4,
          'u32': 4, 'f32': 4, 's64': 8, 'u64': 8, 'f64': 8}
_SHAPE = re.compile(r'\b(pred|[su](?:8|16|32|64)|bf16|f16|f32|f64|f8\w*?)\[([\d,]*)\]')
_HEADER = re.compile(r'^(ENTRY )?%?([\w.\-]+) .*\{\s*$')
_OP = re.compile(r'^\s*(?:ROOT )?%?([\w.\-]+) = (.*?) ([a-z][\w\-]*)\((.*)$')
_CALLS = re.compile(r'\b(calls|to_apply|body|condition|true_computation|false_computation)='
                    r'%?([\w.\-]+)')
_LISTS = re.compile(r'\b(?:branch_computations|called_computations)=\{([^}]*)\}')
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')


@dataclasses.dataclass
class _Op:
  kind: str
  shape: str
  line: str


@dataclasses.dataclass
class _Computation:
  ops: list[_Op] = dataclasses.field(default_factory=list)
  # (callee, how often per call: a while body's trip count, else 1; the while op or None).
  calls: list[tuple[str, Any, str | None]] = dataclasses.field(default_factory=list)


def _parse(text: str) -> tuple[str | None, dict[str, _Computation]]:
  computations: dict[str, _Computation] = {}
  entry, current = None, None
  for line in text.splitlines():
    header = _HEADER.match(line)
    if header and not line.startswith(' '):
      current = computations.setdefault(header.group(2), _Computation())
      entry = header.group(2) if header.group(1) else entry
      continue
    match = _OP.match(line) if current is not None else None
    if not match:
      continue
    name, shape, kind, _ = match.groups()
    current.ops.append(_Op(kind, shape, line))
    trip = _TRIP.search(line)
    roles = dict((role, callee) for role, callee in _CALLS.findall(line))
    for role, callee in roles.items():
      loop = kind == 'while' and role in ('body', 'condition')
      count: int | str = 1
      if loop:  # The trip count, or the condition to read it from (resolved below).
        count = int(trip.group(1)) if trip else roles.get('condition', '')
      current.calls.append((callee, count, name if loop else None))
    for group in _LISTS.findall(line):
      current.calls.extend((c.strip().lstrip('%'), 1, None) for c in group.split(',') if c.strip())
  for comp in computations.values():
    comp.calls = [(c, n if isinstance(n, int) else _trip_from_condition(computations.get(n)), l)
                  for c, n, l in comp.calls]
  return entry, computations


def _trip_from_condition(condition: _Computation | None) -> int:
  """N of a `counter < N` loop condition (jax's scans count from 0), else 1 (unknown)."""
  if condition is None:
    return 1
  constants = [m.group(1) for op in condition.ops if op.kind == 'constant'
               for m in [re.search(r'constant\((\d+)\)', op.line)] if m]
  compares = [op for op in condition.ops if op.kind == 'compare' and 'direction=LT' in op.line]
  return int(constants[0]) if len(constants) == 1 and len(compares) == 1 else 1


def _bytes(kind: str, shape: str) -> int:
  sizes = []
  for dtype, dims in _SHAPE.findall(shape):
    count = 1
    for d in dims.split(','):
      count *= int(d) if d else 1
    if dtype == 'u32' and not dims:
      continue  # The context scalars of async collectives, not data.
    sizes.append(count * _BYTES.get(dtype, 1))
  if kind.endswith('-start') and not kind.startswith('all-reduce') and len(sizes) % 2 == 0:
    sizes = sizes[len(sizes) // 2:]  # (inputs, outputs): the outputs are what moves.
  return sum(sizes)


def _base_kind(kind: str) -> str | None:
  base = kind[:-len('-start')] if kind.endswith('-start') else kind
  return base if base in COLLECTIVES else None


def analyze(text: str, accum_steps: int = 1) -> dict[str, Any]:
  """Collectives and fused attention kernels of one compiled program's HLO text.

  Args:
    text: `compiled.as_text()`.
    accum_steps: the step's micro-batches; the accumulation loop is the top-level while whose
      trip count equals it (layer scans nest inside it and have the depth as trip count).

  Returns:
    {'collectives': {kind: {'ops', 'ops_in_accumulation_loop', 'runs_per_step',
    'bytes_per_step'}}, 'fused_attention_kernels': {'forward', 'backward', 'total'},
    'while_loops': [trip counts]}. Counts are of ops in the program; runs multiply each op by
    the trip counts of the loops around it.
  """
  entry, computations = _parse(text)
  stats: dict[str, dict[str, int]] = collections.defaultdict(
      lambda: {'ops': 0, 'ops_in_accumulation_loop': 0, 'runs_per_step': 0, 'bytes_per_step': 0})
  fused = {'forward': 0, 'backward': 0}
  trips: list[int] = []
  seen_ops: set[tuple[str, int]] = set()

  def visit(name: str, runs: int, in_accum: bool, top: bool) -> None:
    comp = computations.get(name)
    if comp is None:
      return
    for index, op in enumerate(comp.ops):
      first = (name, index) not in seen_ops
      seen_ops.add((name, index))
      base = _base_kind(op.kind)
      if base:
        entry_stats = stats[base]
        entry_stats['ops'] += first
        entry_stats['ops_in_accumulation_loop'] += first and in_accum
        entry_stats['runs_per_step'] += runs
        entry_stats['bytes_per_step'] += runs * _bytes(op.kind, op.shape)
      if first and op.kind == 'custom-call' and 'cudnn$fmha' in op.line:
        fused['backward' if 'Backward' in op.line else 'forward'] += 1
    for callee, trip, loop in comp.calls:
      if loop and callee and trip > 1 and (name, loop, callee) not in _visited_loops:
        _visited_loops.add((name, loop, callee))
        trips.append(trip)
      accum_loop = top and loop is not None and accum_steps > 1 and trip == accum_steps
      visit(callee, runs * trip, in_accum or accum_loop, False)

  _visited_loops: set[tuple[str, str, str]] = set()
  if entry is not None:
    visit(entry, 1, False, True)
  fused['total'] = fused['forward'] + fused['backward']
  return {'collectives': {k: dict(v) for k, v in sorted(stats.items())},
          'fused_attention_kernels': fused, 'while_loops': sorted(set(trips))}
