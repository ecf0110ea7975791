"""FLOPs and bytes: counted analytically for ViTs, read from XLA for any compiled program."""

from __future__ import annotations

from typing import Any

import jax

# Dense bf16 peak FLOP/s by device kind (vendor data sheets; SXM parts for NVIDIA). Matched by
# substring against `jax.devices()[0].device_kind`, most specific first.
PEAK_BF16_FLOPS = (
    ('H100 PCIe', 756e12),
    ('H100', 989e12),
    ('H200', 989e12),
    ('GH200', 989e12),
    ('B200', 2250e12),
    ('A100', 312e12),
    ('L4', 121e12),
    ('A10G', 70e12),
    ('TPU v6 lite', 918e12),
    ('TPU v5 lite', 197e12),
    ('TPU v5p', 459e12),
    ('TPU v5', 459e12),
    ('TPU v4', 275e12),
    ('TPU v3', 123e12),
)


def peak_flops(device: jax.Device) -> float | None:
  """The device's dense bf16 peak, or None (CPUs, unknown chips)."""
  if device.platform == 'cpu':
    return None
  for name, flops in PEAK_BF16_FLOPS:
    if name in device.device_kind:
      return flops
  return None


def vit_forward_flops(config: Any, num_classes: int, resolution: int) -> float | None:
  """FLOPs of one ViT forward pass per image, 2 per multiply-add (matmuls and convs only).

  Per layer with N tokens of width D and MLP width M: QKV 3*2ND^2, attention logits and the
  weighted sum 2*2N^2D, output projection 2ND^2, MLP 2*2NDM. Plus the patch embedding and the
  head; norms, softmax and GELU are left out (they are O(ND), not O(ND^2)). Returns None for
  hybrids (the ResNet would need its own count) and non-ViT families.
  """
  if 'transformer' not in config or config.get('resnet') is not None:
    return None
  ph, pw = config.patches.size
  grid = (resolution // ph) * (resolution // pw)
  tokens = grid + (1 if config.classifier == 'token' else 0)
  width, mlp = config.hidden_size, config.transformer.mlp_dim
  per_layer = (2 * tokens * width * 3 * width + 2 * 2 * tokens * tokens * width +
               2 * tokens * width * width + 2 * 2 * tokens * width * mlp)
  embedding = 2 * grid * ph * pw * 3 * width
  representation = config.get('representation_size') or 0
  head = 2 * (representation or width) * num_classes + 2 * width * representation
  return float(embedding + config.transformer.num_layers * per_layer + head)


def xla_flops(compiled: Any) -> float | None:
  """FLOPs of a compiled program by XLA's cost analysis (None where the backend gives none)."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # Older jax: one dict per computation.
    analysis = analysis[0] if analysis else None
  return float(analysis['flops']) if analysis and 'flops' in analysis else None


def peak_bytes(compiled: Any) -> int | None:
  """Arguments + outputs + temporaries - aliased (donated) bytes of a compiled program."""
  memory = compiled.memory_analysis()
  if memory is None:
    return None
  return int(memory.argument_size_in_bytes + memory.output_size_in_bytes +
             memory.temp_size_in_bytes - memory.alias_size_in_bytes)
