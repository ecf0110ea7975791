"""Compiles a config's real train and eval steps for a named target and reports on them.

`compile_for_target(config, 'v5e-8')` prepares the config for the target's mesh
(`training.settings.prepare`, with the dataset's class count and no data), builds the job with
`training.job.build` (what `train_and_evaluate` runs and `Job.memory_analysis` compiles), lowers
its steps with abstract,
sharded arguments onto the target's compile-only devices and reads XLA's memory analysis, cost
analysis and optimized HLO. Nothing is allocated and no accelerator is needed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import time
from typing import Any, Iterator

from absl import logging
import jax
import ml_collections
import numpy as np

from vit_jax.aot import hlo
from vit_jax.aot import targets
from vit_jax.benchmarking import flops as flops_lib
from vit_jax.checkpoint import paths
from vit_jax.data import labels
from vit_jax.models import layers
from vit_jax.training import distill
from vit_jax.training import job as job_lib
from vit_jax.training import settings as settings_lib
from vit_jax.training import sharding

_UNITS = {'K': 2**10, 'M': 2**20, 'G': 2**30, 'T': 2**40}


@dataclasses.dataclass
class Report:
  """What compiling one config for one target found (all memory figures per device)."""
  target: str
  devices: int
  device_kind: str
  device_memory_bytes: int
  usable_memory_bytes: int | None  # GPUs: JAX's default preallocation; TPUs: XLA's own check.
  fits: bool
  # params, optimizer, temporaries, total; and teacher (its variables) when distilling.
  per_device_bytes: dict[str, int | None]
  oom_message: str | None
  flops_per_step: float | None  # XLA's count, whole optimizer step (all micro-batches), global.
  model_flops_per_step: float | None  # Analytic: 3 x forward matmul FLOPs x batch (ViTs).
  estimated_step_seconds: float | None
  estimated_mfu: float | None
  estimate_note: str | None  # Why there is no estimate, or what it rests on.
  collectives: dict[str, dict[str, int]]
  fused_attention_kernels: dict[str, int]
  while_loops: list[int]
  compile_seconds: float
  eval_step: dict[str, Any] | None
  config: dict[str, Any]  # The fields that shape the program (batch, dtype, accum, remat ...).
  attention: str = 'auto'  # 'xla': cuDNN flash attention was ruled out (for comparison).
  overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
  smaller_accum_steps: int | None = None  # --fit: fewer steps than configured that also fit.
  # Where accum_steps micro-batches compute another step than one batch (BatchNorm), in words.
  accumulation_caveats: list[str] = dataclasses.field(default_factory=list)
  executable_path: str | None = None

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=2, default=str)


def prepared(config: ml_collections.ConfigDict,
             mesh: jax.sharding.Mesh) -> ml_collections.FrozenConfigDict:
  """The job's settings of `config` on `mesh` without its data: the class count is
  `config.num_classes` or the dataset's (`data.labels`), the steps the config's."""
  if config.num_classes:
    num_classes = int(config.num_classes)
  elif config.dataset in labels.DATASETS:
    num_classes = labels.DATASETS[config.dataset][1]
  else:
    raise ValueError(f'Unknown class count of dataset {config.dataset!r}: set '
                     '--config.num_classes')
  return settings_lib.prepare(config, settings_lib.DataFacts(num_classes=num_classes), mesh)


def count_eval_step(report: Report) -> None:
  """Folds `report.eval_step`'s verdict into `report.fits`: a job fits when both steps do."""
  if report.eval_step is None or report.eval_step['fits'] or not report.fits:
    return
  report.fits = False
  total = report.eval_step.get('total')
  report.oom_message = ('the train step fits but the eval step does not (lower '
                        'eval_batch_size): ' + (report.eval_step.get('oom_message') or
                                                f'it needs {total / 2**30:.2f} GiB per device'))


def summary(settings: ml_collections.FrozenConfigDict) -> dict[str, Any]:
  """The settings that decide the compiled program's size."""
  transformer = settings.model.get('transformer') or {}  # Models without one: no remat, scan.
  return {'model_name': settings.model_name, 'image_size': list(settings.image_size),
          'batch_size': settings.batch_size, 'eval_batch_size': settings.eval_batch_size,
          'accum_steps': settings.accum_steps, 'dtype': settings.model.dtype,
          'remat': bool(transformer.get('remat')), 'scan': bool(transformer.get('scan')),
          'mesh': [list(a) for a in settings.mesh],
          'sharding_rules': [list(r) for r in settings.sharding_rules]}


def _hlo_bytes(message: str, what: str) -> int | None:
  m = re.search(what + r'\s*\(([\d.]+)([KMGT])\)', message)
  return int(float(m.group(1)) * _UNITS[m.group(2)]) if m else None


def _oom_text(error: Exception) -> str | None:
  """The compiler's out-of-memory message, or None when `error` is something else."""
  text = str(error)
  if 'RESOURCE_EXHAUSTED' not in text and 'exceeds available' not in text:
    return None
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  return ' '.join(lines[:3])[:1000]


@contextlib.contextmanager
def _platform(target: targets.Target, attention: str = 'auto') -> Iterator[None]:
  """Traces the model as it would be traced on the target (attention kernel choice).

  attention='xla' traces for a platform named 'xla', which has no cuDNN: XLA's attention
  everywhere, to compare against the fused kernels.
  """
  if attention not in ('auto', 'xla'):
    raise ValueError(f"attention must be 'auto' or 'xla', got {attention!r}")
  with layers.attention_platform(target.platform if attention == 'auto' else 'xla'):
    yield


def model_flops(settings: ml_collections.FrozenConfigDict, model: Any) -> float | None:
  """3 x the analytic forward FLOPs x batch: the matmul work of one optimizer step (ViTs)."""
  fields = ('transformer', 'patches', 'hidden_size', 'classifier', 'representation_size',
            'resnet')
  spec = ml_collections.ConfigDict({k: getattr(model, k) for k in fields if hasattr(model, k)})
  forward = flops_lib.vit_forward_flops(spec, settings.num_classes, settings.image_size[0])
  return None if forward is None else 3. * forward * settings.batch_size


def _teacher(settings: ml_collections.FrozenConfigDict,
             mesh: jax.sharding.Mesh) -> tuple[Any, Any]:
  """A distillation job's teacher module and replicated abstract variables, else (None, None):
  the train step a DeiT run compiles includes the frozen teacher's forward pass."""
  if not settings.distillation:
    return None, None
  model, shapes = distill.abstract_teacher(settings.distillation, settings.image_size,
                                           settings.num_classes)
  replicated = sharding.replicated(mesh)
  return model, jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), shapes)


def xla_step_flops(config: ml_collections.ConfigDict) -> float | None:
  """XLA's HLO cost analysis of the whole step of `config` as one loop-free program (on the
  host CPU).

  Loops are counted once by XLA, so the step is lowered with one micro-batch of the full batch
  and unscanned layers: the same arithmetic, remat's recomputation included.
  """
  flat = ml_collections.ConfigDict(config.to_dict())
  flat.accum_steps = 1
  if 'transformer' in flat.model:
    flat.model.transformer.scan = False
  cpu = jax.local_devices(backend='cpu')[:1]
  names = tuple(str(name) for name, _ in config.mesh)
  mesh = jax.sharding.Mesh(np.array(cpu).reshape((1,) * len(names)), names)
  settings = prepared(flat, mesh)
  with jax.set_mesh(mesh):
    teacher, teacher_variables = _teacher(settings, mesh)
    job = job_lib.build(settings, mesh, teacher=teacher)
    lowered = job.train_step.lower(job.abstract_state(), job.abstract_batch(), teacher_variables)
    analysis = lowered.cost_analysis()
  return float(analysis['flops']) if analysis and 'flops' in analysis else None


def _estimate(target: targets.Target, compiled: Any, analysis: dict[str, Any],
              model_flops_: float | None, device: Any) -> tuple[float | None, float | None, str]:
  if target.platform != 'tpu':
    return None, None, 'XLA has no cost model for GPU targets compiled without a GPU'
  if analysis['while_loops']:
    return None, None, (f'the program has loops (trip counts {analysis["while_loops"]}: gradient '
                        'accumulation or layer scan); XLA\'s cost model counts a loop body once')
  costs = compiled.cost_analysis()
  costs = costs[0] if isinstance(costs, (list, tuple)) else costs
  seconds = float((costs or {}).get('optimal_seconds', -1.))
  if seconds <= 0:
    return None, None, f'XLA\'s optimal_seconds is {seconds}, not a usable estimate'
  peak = targets.peak_flops(device)
  mfu = (model_flops_ / (target.num_devices * peak * seconds)
         if model_flops_ and peak else None)
  return seconds, mfu, 'XLA TPU cost model (optimal_seconds): a compiler estimate, not a timing'


def compile_for_target(config: ml_collections.ConfigDict, target_name: str, *,
                       with_eval: bool = True, executable_path: str | None = None,
                       count_flops: bool = True, attention: str = 'auto') -> Report:
  """Compiles `config`'s train (and eval) step for `target_name`; returns the `Report`.

  Args:
    config: an experiment config (as `--config` loads it).
    target_name: e.g. 'v5e-8', 'v4-32', 'h100-8', 'h200-8x2' (see `vit_jax.aot.targets`).
    with_eval: also compile the eval step (`Report.eval_step`).
    executable_path: where to write the serialized train executable (when it compiled).
    count_flops: also lower the step on the host CPU for XLA's whole-step FLOP count.
    attention: 'auto' (cuDNN flash attention where a GPU takes it) or 'xla' (never cuDNN).

  Raises:
    targets.MissingExtraError: the target's extra (libtpu or the CUDA plugin) is not installed.
  """
  target = targets.parse(target_name)
  devices = targets.devices(target)
  mesh = sharding.make_mesh(config.mesh, devices)
  settings = prepared(config, mesh)
  options = targets.GPU_COMPILER_OPTIONS if target.platform == 'gpu' else None
  usable = targets.usable_memory_bytes(target)
  with _platform(target, attention), jax.set_mesh(mesh):
    teacher, teacher_variables = _teacher(settings, mesh)
    job = job_lib.build(settings, mesh, teacher=teacher)
    start = time.time()
    lowered = job.train_step.lower(job.abstract_state(), job.abstract_batch(), teacher_variables)
    compiled, oom = None, None
    try:
      compiled = lowered.compile(compiler_options=options)
    except jax.errors.JaxRuntimeError as e:
      oom = _oom_text(e)
      if oom is None:
        raise
    compile_seconds = time.time() - start
    eval_report = _compile_eval(job, options, usable) if with_eval else None
  state = job.abstract_state()
  per_device = {'params': job_lib.per_device_bytes(state.params),
                'optimizer': job_lib.per_device_bytes(state.opt_state)}
  if teacher_variables is not None:
    per_device['teacher'] = job_lib.per_device_bytes(teacher_variables)
  if compiled is not None:
    stats = compiled.memory_analysis()
    per_device['temporaries'] = int(stats.temp_size_in_bytes)
    per_device['total'] = flops_lib.peak_bytes(compiled)
    analysis = hlo.analyze(compiled.as_text(), settings.accum_steps)
    fits = usable is None or per_device['total'] <= usable
    if not fits:
      oom = (f'needs {per_device["total"] / 2**30:.2f} GiB per device, more than the '
             f'{usable / 2**30:.2f} GiB a JAX process preallocates on {devices[0].device_kind}')
  else:
    per_device['temporaries'] = _hlo_bytes(oom, 'HLO temporaries')
    per_device['total'] = None
    analysis = {'collectives': {}, 'fused_attention_kernels': {}, 'while_loops': []}
    fits = False
  analytic = model_flops(settings, job.model)
  seconds, mfu, note = (_estimate(target, compiled, analysis, analytic, devices[0])
                        if compiled is not None else (None, None, 'did not compile (memory)'))
  if compiled is None or not executable_path or not _save_executable(compiled, executable_path):
    executable_path = None
  report = Report(
      target=target.name, devices=target.num_devices, device_kind=devices[0].device_kind,
      device_memory_bytes=targets.device_memory_bytes(target), usable_memory_bytes=usable,
      fits=fits, per_device_bytes=per_device, oom_message=oom,
      flops_per_step=xla_step_flops(config) if count_flops else None,
      model_flops_per_step=analytic, estimated_step_seconds=seconds, estimated_mfu=mfu,
      estimate_note=note, collectives=analysis['collectives'],
      fused_attention_kernels=analysis['fused_attention_kernels'],
      while_loops=analysis['while_loops'], compile_seconds=round(compile_seconds, 2),
      eval_step=eval_report, config=summary(settings), attention=attention,
      executable_path=executable_path, accumulation_caveats=job.accumulation_caveats())
  count_eval_step(report)
  return report


def eval_and_flops(config: ml_collections.ConfigDict, target_name: str
                   ) -> tuple[dict[str, Any], float | None]:
  """(`Report.eval_step`, `Report.flops_per_step`) alone, without compiling the train step."""
  target = targets.parse(target_name)
  mesh = sharding.make_mesh(config.mesh, targets.devices(target))
  options = targets.GPU_COMPILER_OPTIONS if target.platform == 'gpu' else None
  with _platform(target), jax.set_mesh(mesh):
    job = job_lib.build(prepared(config, mesh), mesh)
    report = _compile_eval(job, options, targets.usable_memory_bytes(target))
  return report, xla_step_flops(config)


def _compile_eval(job: job_lib.Job, options: dict[str, Any] | None,
                  usable: int | None) -> dict[str, Any]:
  try:
    lowered = job.eval_step.lower(job.abstract_state(),
                                  job.abstract_batch(job.config.eval_batch_size))
    compiled = lowered.compile(compiler_options=options)
  except jax.errors.JaxRuntimeError as e:
    oom = _oom_text(e)
    if oom is None:
      raise
    return {'fits': False, 'oom_message': oom}
  total = flops_lib.peak_bytes(compiled)
  analysis = hlo.analyze(compiled.as_text())
  return {'fits': usable is None or total <= usable, 'oom_message': None,
          'temporaries': int(compiled.memory_analysis().temp_size_in_bytes), 'total': total,
          'fused_attention_kernels': analysis['fused_attention_kernels']}


def _save_executable(compiled: Any, path: str) -> bool:
  """Pickles (executable bytes, input tree, output tree) for
  `jax.experimental.serialize_executable.deserialize_and_load` on the target."""
  import pickle  # pylint: disable=g-import-not-at-top
  from jax.experimental import serialize_executable  # pylint: disable=g-import-not-at-top
  try:
    payload = serialize_executable.serialize(compiled)
  except Exception as e:  # pylint: disable=broad-except
    logging.warning('Could not serialize the executable for reuse: %s', e)
    return False
  paths.write_bytes(path, pickle.dumps(payload))  # Local or gs://, written whole.
  return True


def _gib(value: int | None) -> str:
  return 'n/a' if value is None else f'{value / 2**30:.2f} GiB'


def format_report(report: Report) -> str:
  """The short human-readable report."""
  b = report.per_device_bytes
  lines = [f'{report.config["model_name"]} batch {report.config["batch_size"]} '
           f'{report.config["dtype"]} on {report.target} ({report.devices} x '
           f'{report.device_kind}, {_gib(report.device_memory_bytes)} each)',
           f'fits: {report.fits}' + (f'  ({report.oom_message})' if report.oom_message else ''),
           f'per device: params {_gib(b["params"])}, optimizer {_gib(b["optimizer"])}, '
           f'temporaries {_gib(b["temporaries"])}, total {_gib(b["total"])}',
           f'compile: {report.compile_seconds:.1f} s']
  if report.flops_per_step:
    lines.append(f'FLOPs per step: XLA {report.flops_per_step:.3e}, analytic model '
                 f'{report.model_flops_per_step or 0:.3e}')
  if report.estimated_step_seconds:
    mfu = f', MFU {report.estimated_mfu:.1%}' if report.estimated_mfu else ''
    lines.append(f'estimated step: {report.estimated_step_seconds * 1e3:.1f} ms{mfu} '
                 f'(compiler estimate)')
  else:
    lines.append(f'no step-time estimate: {report.estimate_note}')
  for kind, c in report.collectives.items():
    lines.append(f'{kind}: {c["ops"]} ops ({c["ops_in_accumulation_loop"]} inside the '
                 f'accumulation loop), {c["runs_per_step"]} runs, '
                 f'{_gib(c["bytes_per_step"])} per step')
  if report.fused_attention_kernels:
    f = report.fused_attention_kernels
    lines.append(f'cuDNN fused attention kernels: {f["forward"]} forward, {f["backward"]} '
                 'backward')
  if report.eval_step:
    lines.append(f'eval step: fits {report.eval_step["fits"]}, total '
                 f'{_gib(report.eval_step.get("total"))}')
  if report.overrides:
    lines.append('--fit chose: ' + ' '.join(f'--config.{k}={v!r}'
                                             for k, v in report.overrides.items()))
  if report.smaller_accum_steps:
    lines.append(f'--fit: fewer accumulation steps than the configured '
                 f'{report.config["accum_steps"]} fit too (fewer steps run faster): '
                 f'--config.accum_steps={report.smaller_accum_steps}')
  lines.extend(f'caveat: {caveat}' for caveat in report.accumulation_caveats)
  return '\n'.join(lines)
