"""Imports timm (and transformers) where torchvision's compiled ops are unusable (CPU torch +
a CUDA torchvision).

timm imports torchvision at import time, and PyPI has no CPU torchvision wheel: the available one,
installed with `--no-deps` beside a CPU torch, cannot load its C++ ops, and its Python side then
fails to register fake kernels for them ("operator torchvision::nms does not exist"). Declaring
the op schemas first lets torchvision's Python code (transforms, FrozenBatchNorm2d) import; the
detection ops themselves stay unavailable, which neither timm's classifiers nor we use.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# torchvision's operator schemas (csrc/ops/*.cpp).
_TORCHVISION_SCHEMAS = (
    'nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor',
    'qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor',
    'roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, '
    'SymInt pooled_width, int sampling_ratio, bool aligned) -> Tensor',
    '_roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, SymInt pooled_height, '
    'SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width, '
    'int sampling_ratio, bool aligned) -> Tensor',
    'qroi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, '
    'SymInt pooled_width, int sampling_ratio, bool aligned) -> Tensor',
    'ps_roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, '
    'SymInt pooled_width, int sampling_ratio) -> (Tensor, Tensor)',
    '_ps_roi_align_backward(Tensor grad, Tensor rois, Tensor channel_mapping, '
    'float spatial_scale, SymInt pooled_height, SymInt pooled_width, int sampling_ratio, '
    'SymInt batch_size, SymInt channels, SymInt height, SymInt width) -> Tensor',
    'roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, '
    'SymInt pooled_width) -> (Tensor, Tensor)',
    '_roi_pool_backward(Tensor grad, Tensor rois, Tensor argmax, float spatial_scale, '
    'SymInt pooled_height, SymInt pooled_width, SymInt batch_size, SymInt channels, '
    'SymInt height, SymInt width) -> Tensor',
    'ps_roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, '
    'SymInt pooled_width) -> (Tensor, Tensor)',
    '_ps_roi_pool_backward(Tensor grad, Tensor rois, Tensor channel_mapping, '
    'float spatial_scale, SymInt pooled_height, SymInt pooled_width, SymInt batch_size, '
    'SymInt channels, SymInt height, SymInt width) -> Tensor',
    'deform_conv2d(Tensor input, Tensor weight, Tensor offset, Tensor mask, Tensor bias, '
    'SymInt stride_h, SymInt stride_w, SymInt pad_h, SymInt pad_w, SymInt dilation_h, '
    'SymInt dilation_w, SymInt groups, SymInt offset_groups, bool use_mask) -> Tensor',
    '_deform_conv2d_backward(Tensor grad, Tensor input, Tensor weight, Tensor offset, '
    'Tensor mask, Tensor bias, SymInt stride_h, SymInt stride_w, SymInt pad_h, SymInt pad_w, '
    'SymInt dilation_h, SymInt dilation_w, SymInt groups, SymInt offset_groups, bool use_mask) '
    '-> (Tensor, Tensor, Tensor, Tensor, Tensor)',
)
_library = None  # Kept alive: dropping a torch.library.Library removes its definitions.


def _declare_torchvision_ops() -> None:
  global _library
  import torch  # pylint: disable=g-import-not-at-top
  if _library is not None or hasattr(torch.ops.torchvision, 'nms'):
    return
  _library = torch.library.Library('torchvision', 'DEF')  # pylint: disable=protected-access
  for schema in _TORCHVISION_SCHEMAS:
    _library.define(schema)


def import_torchvision() -> ModuleType:
  """Returns `torchvision`, importable even when its compiled ops are not (see above)."""
  importlib.import_module('torch')
  try:
    return importlib.import_module('torchvision')
  except RuntimeError:  # Its ops failed to load: declare them and import again.
    import sys  # pylint: disable=g-import-not-at-top
    for name in [m for m in sys.modules if m == 'torchvision' or m.startswith('torchvision.')]:
      del sys.modules[name]
    _declare_torchvision_ops()
    return importlib.import_module('torchvision')


def import_timm() -> ModuleType:
  """Returns the `timm` module; raises ImportError when torch or timm is not installed."""
  import_torchvision()
  return importlib.import_module('timm')


def import_transformers() -> ModuleType:
  """Returns `transformers`, whose vision models import torchvision as timm does."""
  try:
    import_torchvision()
  except ImportError:
    pass  # transformers works without torchvision.
  return importlib.import_module('transformers')
