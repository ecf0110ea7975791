"""ViT parameters <-> Hugging Face `transformers` ViT checkpoints, as NumPy arrays + config.json.

A Hugging Face checkpoint is a folder with `config.json` and `model.safetensors`. We write the
key names of the published Google checkpoints on the Hub (`vit.encoder.layer.{i}.attention.
attention.query.weight`, ...), which every transformers version loads (version 5 renames them
in memory on load and back on save); we also read version 5's in-memory names (`vit.layers.{i}.
attention.q_proj.weight`, ...).

- Classifiers (a head, no representation layer) become `ViTForImageClassification`.
- Feature extractors (no head) become `ViTModel`; a representation layer (`pre_logits`, Dense +
  tanh) is its `pooler` (tanh is the pooler's default activation). An all-zero head, as the
  ImageNet-21k pre-training files ship, may be dropped (`--drop_head`) to get there.
- Not representable, so refused with a clear error: models without a class token (HF ViT always
  prepends one and classifies from it), attention pooling (MAP), a head on top of a
  representation layer, and hybrids: `ViTHybrid` was deprecated and then removed from
  transformers (absent from version 5), so there is no current class to load them into.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import numpy as np

from vit_jax.checkpoint.errors import ConversionError
from vit_jax.models.vit.timm_keys import conv_from_torch
from vit_jax.models.vit.timm_keys import conv_to_torch
from vit_jax.models.vit.timm_keys import default_num_heads
from vit_jax.models.vit.timm_keys import dense_to_linear

FlatParams = dict[str, np.ndarray]

_BLOCK = 'Transformer/encoderblock_'
_MHA = 'MultiHeadDotProductAttention_1'
# transformers' names for the tanh-approximated and exact GELU.
GELU_ACT = {True: 'gelu_pytorch_tanh', False: 'gelu'}
_TANH_ACTS = ('gelu_pytorch_tanh', 'gelu_new', 'gelu_fast', 'gelu_accurate')

# Per-layer modules: (ours, HF's). The attention projections, which reshape per head, are apart.
_LAYER_MAP = (
    ('LayerNorm_0', 'layernorm_before'),
    ('LayerNorm_2', 'layernorm_after'),
    ('MlpBlock_3/Dense_0', 'intermediate.dense'),
    ('MlpBlock_3/Dense_1', 'output.dense'),
)
_QKV = (('query', 'attention.attention.query'), ('key', 'attention.attention.key'),
        ('value', 'attention.attention.value'))

# transformers 5 in-memory names -> Hub names (the reverse of its load-time renaming).
_V5_NAMES = (
    (re.compile(r'(^|\.)layers\.(\d+)\.'), r'\1encoder.layer.\2.'),
    (re.compile(r'\.attention\.([qkv])_proj\.'), None),
    (re.compile(r'\.attention\.o_proj\.'), '.attention.output.dense.'),
    (re.compile(r'\.mlp\.fc1\.'), '.intermediate.dense.'),
    (re.compile(r'\.mlp\.fc2\.'), '.output.dense.'),
)
_QKV_V5 = {'q': 'query', 'k': 'key', 'v': 'value'}


def hub_names(state: Mapping[str, Any]) -> dict[str, Any]:
  """Renames transformers 5 in-memory keys to the Hub's; Hub keys pass unchanged."""
  out = {}
  for key, value in state.items():
    for pattern, replacement in _V5_NAMES:
      if replacement is None:
        key = pattern.sub(lambda m: f'.attention.attention.{_QKV_V5[m.group(1)]}.', key)
      else:
        key = pattern.sub(replacement, key)
    out[key] = value
  return out


def is_hf_vit(keys: Sequence[str]) -> bool:
  """Whether state-dict keys are a transformers ViT (either naming)."""
  return any(k.endswith('embeddings.patch_embeddings.projection.weight') for k in keys)


def _grid_side(tokens: int) -> int:
  side = int(round(np.sqrt(tokens)))
  if side * side != tokens:
    raise ConversionError(f'{tokens} position-embedding grid tokens are not a square grid; HF '
                          'ViT configs describe square images only')
  return side


def to_hf(flat: Mapping[str, np.ndarray], *, gelu_approximate: bool = True,
          label_names: Sequence[str] | None = None) -> tuple[FlatParams, dict[str, Any]]:
  """Our flat ViT parameters -> (HF state dict, config.json contents).

  Args:
    flat: parameters with the original `.npz` keys.
    gelu_approximate: the GELU form the model was trained with (the original code: tanh).
    label_names: names for `id2label`, one per head output.

  Raises:
    ConversionError: the model is not representable as an HF ViT (see the module docstring).
  """
  ours = {k: np.asarray(v) for k, v in flat.items()}
  if 'conv_root/kernel' in ours:
    raise ConversionError(
        'Hybrid ResNet+ViT models have no transformers class: ViTHybrid was removed from '
        'transformers (version 5); convert hybrids to timm instead')
  if 'dist' in ours:
    raise ConversionError('HF ViT has no distillation token; DeiT distilled models convert to '
                          'timm (VisionTransformerDistilled)')
  if 'cls' not in ours:
    raise ConversionError('HF ViT always classifies from a class token; this model has none '
                          '(global average pooling or MAP); convert it to timm instead')
  has_head = 'head/kernel' in ours
  has_pre_logits = 'pre_logits/kernel' in ours
  if has_head and has_pre_logits:
    raise ConversionError(
        'HF has no ViT class with both a representation layer (pre_logits) and a head: '
        'ViTForImageClassification has no pooler and ViTModel no head. For an ImageNet-21k '
        'pre-training file (whose head is all zeros) convert with --drop_head to get ViTModel '
        'with its pooler')
  prefix = 'vit.' if has_head else ''
  ph, pw, channels, hidden = ours['embedding/kernel'].shape
  if ph != pw:
    raise ConversionError(f'HF ViT needs square patches, got {ph}x{pw}')
  posemb = ours['Transformer/posembed_input/pos_embedding']
  side = _grid_side(posemb.shape[1] - 1)

  state: FlatParams = {}
  used = set()

  def take(key):
    used.add(key)
    return ours[key]

  state[f'{prefix}embeddings.cls_token'] = take('cls')
  state[f'{prefix}embeddings.position_embeddings'] = take(
      'Transformer/posembed_input/pos_embedding')
  state[f'{prefix}embeddings.patch_embeddings.projection.weight'] = conv_to_torch(
      take('embedding/kernel'))
  state[f'{prefix}embeddings.patch_embeddings.projection.bias'] = take('embedding/bias')
  layers = 0
  while f'{_BLOCK}{layers}/LayerNorm_0/scale' in ours:
    src, dst = f'{_BLOCK}{layers}/', f'{prefix}encoder.layer.{layers}.'
    for ln in ('LayerNorm_0', 'LayerNorm_2'):
      hf = dict(_LAYER_MAP)[ln]
      state[f'{dst}{hf}.weight'] = take(f'{src}{ln}/scale')
      state[f'{dst}{hf}.bias'] = take(f'{src}{ln}/bias')
    for dense in ('MlpBlock_3/Dense_0', 'MlpBlock_3/Dense_1'):
      hf = dict(_LAYER_MAP)[dense]
      state[f'{dst}{hf}.weight'] = dense_to_linear(take(f'{src}{dense}/kernel'))
      state[f'{dst}{hf}.bias'] = take(f'{src}{dense}/bias')
    for ours_name, hf in _QKV:
      kernel = take(f'{src}{_MHA}/{ours_name}/kernel')
      state[f'{dst}{hf}.weight'] = dense_to_linear(kernel.reshape(hidden, -1))
      state[f'{dst}{hf}.bias'] = take(f'{src}{_MHA}/{ours_name}/bias').reshape(-1)
    out_kernel = take(f'{src}{_MHA}/out/kernel')
    num_heads = out_kernel.shape[0]
    state[f'{dst}attention.output.dense.weight'] = dense_to_linear(
        out_kernel.reshape(-1, hidden))
    state[f'{dst}attention.output.dense.bias'] = take(f'{src}{_MHA}/out/bias')
    mlp_dim = ours[f'{src}MlpBlock_3/Dense_0/kernel'].shape[1]
    layers += 1
  if not layers:
    raise ConversionError('Not a ViT: no Transformer/encoderblock_0')
  state[f'{prefix}layernorm.weight'] = take('Transformer/encoder_norm/scale')
  state[f'{prefix}layernorm.bias'] = take('Transformer/encoder_norm/bias')
  num_labels = 0
  if has_head:
    state['classifier.weight'] = dense_to_linear(take('head/kernel'))
    state['classifier.bias'] = take('head/bias')
    num_labels = state['classifier.bias'].shape[0]
  if has_pre_logits:
    state['pooler.dense.weight'] = dense_to_linear(take('pre_logits/kernel'))
    state['pooler.dense.bias'] = take('pre_logits/bias')
  left = sorted(set(ours) - used)
  if left:
    raise ConversionError('HF ViT has no place for: ' + ', '.join(left))

  config: dict[str, Any] = {
      'architectures': ['ViTForImageClassification' if has_head else 'ViTModel'],
      'model_type': 'vit',
      'hidden_size': int(hidden),
      'num_hidden_layers': layers,
      'num_attention_heads': int(num_heads),
      'intermediate_size': int(mlp_dim),
      'hidden_act': GELU_ACT[gelu_approximate],
      'hidden_dropout_prob': 0.0,
      'attention_probs_dropout_prob': 0.0,
      'initializer_range': 0.02,
      'layer_norm_eps': 1e-6,  # Ours; HF's default (1e-12) would shift the logits slightly.
      'image_size': int(side * ph),
      'patch_size': int(ph),
      'num_channels': int(channels),
      'qkv_bias': True,
      'encoder_stride': int(ph),
  }
  if has_pre_logits:
    config['pooler_output_size'] = int(state['pooler.dense.bias'].shape[0])
    config['pooler_act'] = 'tanh'
  if has_head:
    names = (list(label_names) if label_names is not None
             else [f'LABEL_{i}' for i in range(num_labels)])
    if len(names) != num_labels:
      raise ConversionError(f'{len(names)} label names for {num_labels} classes')
    config['id2label'] = {str(i): name for i, name in enumerate(names)}
    config['label2id'] = {name: i for i, name in enumerate(names)}
  return state, config


def from_hf(state: Mapping[str, np.ndarray],
            config: Mapping[str, Any] | None = None) -> FlatParams:
  """An HF ViT state dict (ViTForImageClassification or ViTModel) -> our flat parameters.

  Args:
    state: HF keys (Hub or transformers 5 names) to NumPy arrays.
    config: config.json contents; gives the number of heads (default: the ViT zoo's count for
      the width).

  Raises:
    ConversionError: parameters we have no place for (e.g. a mask token), or unknown heads.
  """
  theirs = hub_names({k: np.asarray(v) for k, v in state.items()})
  prefix = 'vit.' if any(k.startswith('vit.') for k in theirs) else ''
  used = set()

  def take(key):
    if key not in theirs:
      raise ConversionError(f'Missing parameter {key!r}')
    used.add(key)
    return theirs[key]

  out: FlatParams = {}
  out['cls'] = take(f'{prefix}embeddings.cls_token')
  out['Transformer/posembed_input/pos_embedding'] = take(
      f'{prefix}embeddings.position_embeddings')
  out['embedding/kernel'] = conv_from_torch(
      take(f'{prefix}embeddings.patch_embeddings.projection.weight'))
  out['embedding/bias'] = take(f'{prefix}embeddings.patch_embeddings.projection.bias')
  hidden = out['embedding/kernel'].shape[-1]
  num_heads = (config or {}).get('num_attention_heads') or default_num_heads(hidden)
  if hidden % num_heads:
    raise ConversionError(f'Width {hidden} is not divisible by {num_heads} heads')
  head_dim = hidden // num_heads
  i = 0
  while f'{prefix}encoder.layer.{i}.layernorm_before.weight' in theirs:
    src, dst = f'{prefix}encoder.layer.{i}.', f'{_BLOCK}{i}/'
    for ours_name, hf in _LAYER_MAP:
      if ours_name.startswith('LayerNorm'):
        out[f'{dst}{ours_name}/scale'] = take(f'{src}{hf}.weight')
      else:
        out[f'{dst}{ours_name}/kernel'] = dense_to_linear(take(f'{src}{hf}.weight'))
      out[f'{dst}{ours_name}/bias'] = take(f'{src}{hf}.bias')
    for ours_name, hf in _QKV:
      out[f'{dst}{_MHA}/{ours_name}/kernel'] = np.ascontiguousarray(
          take(f'{src}{hf}.weight').T.reshape(hidden, num_heads, head_dim))
      out[f'{dst}{_MHA}/{ours_name}/bias'] = take(f'{src}{hf}.bias').reshape(num_heads, head_dim)
    out[f'{dst}{_MHA}/out/kernel'] = np.ascontiguousarray(
        take(f'{src}attention.output.dense.weight').T.reshape(num_heads, head_dim, hidden))
    out[f'{dst}{_MHA}/out/bias'] = take(f'{src}attention.output.dense.bias')
    i += 1
  if not i:
    raise ConversionError('Not an HF ViT: no encoder layers')
  out['Transformer/encoder_norm/scale'] = take(f'{prefix}layernorm.weight')
  out['Transformer/encoder_norm/bias'] = take(f'{prefix}layernorm.bias')
  if 'classifier.weight' in theirs:
    out['head/kernel'] = dense_to_linear(take('classifier.weight'))
    out['head/bias'] = take('classifier.bias')
  if 'pooler.dense.weight' in theirs:  # Only ViTModel has one.
    act = (config or {}).get('pooler_act', 'tanh')
    if act != 'tanh':
      raise ConversionError(f'The pooler uses {act!r}; our representation layer is tanh')
    out['pre_logits/kernel'] = dense_to_linear(take('pooler.dense.weight'))
    out['pre_logits/bias'] = take('pooler.dense.bias')
  left = sorted(set(theirs) - used)
  # ViTModel checkpoints may carry an unused, all-zero mask token (masked image modelling).
  left = [k for k in left if not (k.endswith('embeddings.mask_token') and not theirs[k].any())]
  if left:
    raise ConversionError('Our VisionTransformer has no place for: ' + ', '.join(left))
  return out


def gelu_approximate_from_config(config: Mapping[str, Any]) -> bool:
  act = config.get('hidden_act', 'gelu')
  if act in _TANH_ACTS:
    return True
  if act == 'gelu':
    return False
  raise ConversionError(f'HF hidden_act {act!r} is not a GELU form our ViT implements')

