"""The ViT (or hybrid) architecture that checkpoint parameters describe, read from their shapes.

The released `.npz` files carry no config, but ViT and hybrid parameters pin the architecture
down: widths, depth, heads (query kernels are (D, heads, D/heads)), patch size, classifier, head
and representation sizes, the ResNet stages of hybrids, and the training resolution (position
embedding grid times the total stride). The results are config dicts; the family record
(`family.py`) builds models from them.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

import numpy as np

from vit_jax.checkpoint import tree
from vit_jax.checkpoint.errors import CheckpointError

_BLOCK_RE = re.compile(r'^Transformer/encoderblock_(\d+)/')
_UNIT_RE = re.compile(r'^block(\d+)/unit(\d+)/')
_MHA = 'MultiHeadDotProductAttention_1'


def _shape(flat: Mapping[str, Any], key: str) -> tuple[int, ...]:
  return tree.leaf_shape(flat, key, 'ViT')


def matches(flat: Mapping[str, Any]) -> bool:
  """Whether flat (`/`-joined) parameters, scanned or per-block, are a ViT or hybrid ViT."""
  flat = tree.unstack_encoder(dict(flat))
  return 'embedding/kernel' in flat and any(_BLOCK_RE.match(k) for k in flat)


def config_from_params(flat: Mapping[str, Any]) -> dict[str, Any]:
  """The `VisionTransformer` fields (and `num_classes`) that fit flat ViT/hybrid parameters.

  Fields the parameters cannot show keep the original library's values: dropout 0 and the tanh
  approximation of GELU (`transformer.gelu_approximate`).

  Raises:
    CheckpointError: the parameters are not a (complete) ViT.
  """
  flat = tree.unstack_encoder(dict(flat))
  ph, pw, _, hidden = _shape(flat, 'embedding/kernel')
  layers = sorted({int(m.group(1)) for m in map(_BLOCK_RE.match, flat) if m})
  if not layers:
    raise CheckpointError('Not a ViT checkpoint: it has no Transformer/encoderblock_*')
  if layers != list(range(len(layers))):
    raise CheckpointError(f'Encoder block indices {layers} have gaps')
  block = 'Transformer/encoderblock_0'
  _, num_heads, _ = _shape(flat, f'{block}/{_MHA}/query/kernel')
  _, mlp_dim = _shape(flat, f'{block}/MlpBlock_3/Dense_0/kernel')
  if 'MAPHead_0/probe' in flat:
    classifier = 'map'
  elif 'cls' in flat:
    classifier = 'token'
  else:
    classifier = 'gap'
  config: dict[str, Any] = dict(
      patches={'size': (ph, pw)},
      hidden_size=hidden,
      transformer=dict(num_layers=len(layers), mlp_dim=mlp_dim, num_heads=num_heads,
                       dropout_rate=0., attention_dropout_rate=0.),
      classifier=classifier,
      representation_size=(_shape(flat, 'pre_logits/kernel')[-1]
                           if 'pre_logits/kernel' in flat else None),
      num_classes=_shape(flat, 'head/kernel')[-1] if 'head/kernel' in flat else None,
      resnet=None,
  )
  if 'dist' in flat:
    config['distilled'] = True  # DeiT: a distillation token after [CLS], and `head_dist`.
  if 'reg' in flat:
    config['reg_tokens'] = _shape(flat, 'reg')[1]
  if f'{block}/ls1/scale' in flat:
    # Any value marks LayerScale on; the trained scales are in the parameters.
    config['transformer']['init_values'] = 1.
  if f'{block}/qk_norm/query_norm/scale' in flat:
    config['transformer']['qk_norm'] = True
  if 'Transformer/posembed_input/pos_embedding' not in flat:
    config['posemb'] = 'sincos2d'
  if 'conv_root/kernel' in flat:
    units: dict[int, set[int]] = {}
    for match in filter(None, map(_UNIT_RE.match, flat)):
      units.setdefault(int(match.group(1)), set()).add(int(match.group(2)))
    if sorted(units) != list(range(1, len(units) + 1)):
      raise CheckpointError(f'Hybrid stages {sorted(units)} have gaps')
    root_width = _shape(flat, 'conv_root/kernel')[-1]
    config['resnet'] = dict(num_layers=tuple(len(units[s]) for s in sorted(units)),
                            width_factor=root_width / 64)
  return config


def num_prefix_tokens(config: Mapping[str, Any]) -> int:
  """Tokens before the patch grid: [CLS] (token classifiers), DeiT's `dist`, register tokens."""
  return (int(config['classifier'] in ('token', 'token_unpooled')) +
          int(bool(config.get('distilled'))) + int(config.get('reg_tokens') or 0))


def feature_stride(config: Mapping[str, Any]) -> int:
  """Pixels per token side: the patch size, times the ResNet's stride for hybrids."""
  patch = config['patches']['size'][0]
  resnet = config.get('resnet')
  if not resnet:
    return patch
  # Root: /4 (stride-2 conv, stride-2 pool); stages after the first halve the map again.
  return patch * 4 * 2**max(len(resnet['num_layers']) - 1, 0)


def image_size(flat: Mapping[str, Any], config: Mapping[str, Any],
                   default: int = 224) -> tuple[int, int]:
  """The resolution a ViT checkpoint was trained at, from its position-embedding grid."""
  key = 'Transformer/posembed_input/pos_embedding'
  if key not in flat:
    return default, default  # sincos2d: any grid works.
  tokens = np.shape(flat[key])[1] - num_prefix_tokens(config)
  side = math.isqrt(tokens)
  if side * side != tokens:
    raise CheckpointError(
        f'The position embedding has {tokens} grid tokens, which is not a square grid; pass the '
        'image size explicitly')
  stride = feature_stride(config)
  return side * stride, side * stride
