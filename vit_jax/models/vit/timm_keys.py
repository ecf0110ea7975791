"""ViT and hybrid parameters <-> timm `VisionTransformer` state dicts, as NumPy arrays.

Both sides are flat dicts: ours with the original `.npz` keys (`Transformer/encoderblock_{i}/...`,
as `checkpoint.load` returns after `flatten`), timm's with its module paths. The mapping is the
one timm's own `.npz` loader (`_load_weights`) applies, run in both directions:

- Dense kernels (in, out) are torch Linear weights (out, in); conv kernels HWIO are OIHW.
- Attention: our per-head query/key/value kernels (D, heads, D/heads) are rows of timm's fused
  `qkv` (3D, D) in [q | k | v] order, head-major; `out` (heads, D/heads, D) is `proj`.
- Hybrids: the ResNet stem sits under `patch_embed.backbone` (`stem.*` and `stages.*`, or just
  `conv`/`norm` for R+Ti/16, whose backbone is the stem alone).
- DeiT distilled models: `dist` and `head_dist` are timm's `dist_token` and `head_dist`
  (`VisionTransformerDistilled`).
- Register tokens `reg` are `reg_token`; LayerScale `ls1`/`ls2` `scale` are `ls1.gamma`/`ls2.gamma`;
  qk-norm's `qk_norm/{query,key}_norm` are `attn.q_norm`/`attn.k_norm`.

Nothing here needs torch: values stay NumPy arrays, and `files` writes them.
"""

from __future__ import annotations

import re
from typing import Mapping

import numpy as np

from vit_jax.checkpoint.errors import ConversionError

FlatParams = dict[str, np.ndarray]

_LN = (('scale', 'weight'), ('bias', 'bias'))
_BLOCK = 'Transformer/encoderblock_'
_MHA = 'MultiHeadDotProductAttention_1'
# Optional block parameters (LayerScale, qk-norm LayerNorms): our leaf -> timm's, in a block.
_BLOCK_OPTIONS = (('ls1/scale', 'ls1.gamma'), ('ls2/scale', 'ls2.gamma'),
                  ('qk_norm/query_norm/scale', 'attn.q_norm.weight'),
                  ('qk_norm/query_norm/bias', 'attn.q_norm.bias'),
                  ('qk_norm/key_norm/scale', 'attn.k_norm.weight'),
                  ('qk_norm/key_norm/bias', 'attn.k_norm.bias'))


# timm's architecture names (a timm repo's `config.json` `architecture`) -> zoo names. timm
# names a resolution; the zoo entry does not (the file's position embedding gives it).
TIMM_NAMES = {
    **{f'vit_{size}_patch{patch}_{res}': f'ViT-{zoo}_{patch}'
       for size, zoo, patch, resolutions in (
           ('tiny', 'Ti', 16, (224, 384)), ('small', 'S', 16, (224, 384)),
           ('small', 'S', 32, (224, 384)), ('base', 'B', 8, (224,)),
           ('base', 'B', 16, (224, 384)), ('base', 'B', 32, (224, 384)),
           ('large', 'L', 16, (224, 384)), ('large', 'L', 32, (224, 384)),
           ('huge', 'H', 14, (224,)))
       for res in resolutions},
    'deit_tiny_patch16_224': 'ViT-Ti_16', 'deit_tiny_distilled_patch16_224': 'ViT-Ti_16',
    'deit_small_patch16_224': 'ViT-S_16', 'deit_small_distilled_patch16_224': 'ViT-S_16',
    'deit_base_patch16_224': 'ViT-B_16', 'deit_base_distilled_patch16_224': 'ViT-B_16',
    'deit_base_patch16_384': 'ViT-B_16', 'deit_base_distilled_patch16_384': 'ViT-B_16',
    'vit_base_r50_s16_224': 'R50+ViT-B_16', 'vit_base_r50_s16_384': 'R50+ViT-B_16',
    'vit_base_r26_s32_224': 'R26+ViT-B_32',
    'vit_small_r26_s32_224': 'R26+ViT-S_32', 'vit_small_r26_s32_384': 'R26+ViT-S_32',
    'vit_large_r50_s32_224': 'R50+ViT-L_32', 'vit_large_r50_s32_384': 'R50+ViT-L_32',
    'vit_tiny_r_s16_p8_224': 'R+ViT-Ti_16', 'vit_tiny_r_s16_p8_384': 'R+ViT-Ti_16',
}

# Heads of the ViT zoo by width, for files that do not say (timm's fused qkv hides them).
_HEADS_BY_WIDTH = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}


def default_num_heads(hidden: int) -> int:
  """The zoo's head count for a ViT width (Ti 3, S 6, B 12, L and H 16)."""
  if hidden not in _HEADS_BY_WIDTH:
    raise ConversionError(f'Cannot tell the number of heads of a width-{hidden} ViT; pass '
                          '--model or --num_heads')
  return _HEADS_BY_WIDTH[hidden]


def dense_to_linear(kernel: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(np.asarray(kernel).T)


def conv_to_torch(kernel: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(np.asarray(kernel).transpose(3, 2, 0, 1))


def conv_from_torch(weight: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(np.asarray(weight).transpose(2, 3, 1, 0))


def _take(source: dict[str, np.ndarray], key: str) -> np.ndarray:
  """Pops `key`, so that whatever is left over at the end is reported as unsupported."""
  if key not in source:
    raise ConversionError(f'Missing parameter {key!r}')
  return source.pop(key)


def _num_blocks(keys, pattern: str) -> int:
  indices = {int(m.group(1)) for m in map(re.compile(pattern).match, keys) if m}
  if indices != set(range(len(indices))):
    raise ConversionError(f'Encoder block indices {sorted(indices)} have gaps')
  return len(indices)


def _fail_on_leftovers(left: Mapping[str, np.ndarray], target: str) -> None:
  if left:
    raise ConversionError(
        f'{target} has no place for: ' + ', '.join(
            f'{k} {tuple(np.shape(v))}' for k, v in sorted(left.items())))


# ---------------------------------------------------------------------------------------------
# Ours -> timm.


def _resnet_to_timm(ours: dict[str, np.ndarray], out: dict[str, np.ndarray]) -> None:
  stages = sorted({int(m.group(1)) for m in map(re.compile(r'block(\d+)/').match, ours) if m})
  # timm's R+Ti/16 backbone is the bare stem module; the others nest it under `stem`.
  stem = 'patch_embed.backbone.' + ('stem.' if stages else '')
  out[stem + 'conv.weight'] = conv_to_torch(_take(ours, 'conv_root/kernel'))
  for a, b in _LN:
    out[f'{stem}norm.{b}'] = np.asarray(_take(ours, f'gn_root/{a}')).reshape(-1)
  for s in stages:
    units = sorted({int(m.group(1)) for m in map(re.compile(rf'block{s}/unit(\d+)/').match, ours)
                    if m})
    for u in units:
      src, dst = f'block{s}/unit{u}/', f'patch_embed.backbone.stages.{s - 1}.blocks.{u - 1}.'
      for r in (1, 2, 3):
        out[f'{dst}conv{r}.weight'] = conv_to_torch(_take(ours, f'{src}conv{r}/kernel'))
        for a, b in _LN:
          out[f'{dst}norm{r}.{b}'] = np.asarray(_take(ours, f'{src}gn{r}/{a}')).reshape(-1)
      if f'{src}conv_proj/kernel' in ours:
        out[f'{dst}downsample.conv.weight'] = conv_to_torch(_take(ours, f'{src}conv_proj/kernel'))
        for a, b in _LN:
          out[f'{dst}downsample.norm.{b}'] = np.asarray(
              _take(ours, f'{src}gn_proj/{a}')).reshape(-1)


def _mha_to_timm(ours: dict[str, np.ndarray], src: str, out: dict[str, np.ndarray], dst: str,
                 names: tuple[str, ...], fused: str, query: str | None = None) -> None:
  """Our per-head q/k/v/out projections -> timm's fused input projection and `proj`."""
  kernels = [_take(ours, f'{src}{n}/kernel') for n in names]
  biases = [_take(ours, f'{src}{n}/bias') for n in names]
  width = kernels[0].shape[0]
  out[f'{dst}{fused}.weight'] = np.concatenate([k.reshape(width, -1).T for k in kernels])
  out[f'{dst}{fused}.bias'] = np.concatenate([b.reshape(-1) for b in biases])
  if query is not None:
    out[f'{dst}{query}.weight'] = dense_to_linear(
        _take(ours, f'{src}query/kernel').reshape(width, -1))
    out[f'{dst}{query}.bias'] = _take(ours, f'{src}query/bias').reshape(-1)
  kernel = _take(ours, f'{src}out/kernel')
  out[f'{dst}proj.weight'] = dense_to_linear(kernel.reshape(-1, kernel.shape[-1]))
  out[f'{dst}proj.bias'] = _take(ours, f'{src}out/bias')


def _mlp_to_timm(ours: dict[str, np.ndarray], src: str, out: dict[str, np.ndarray],
                 dst: str) -> None:
  for r in (0, 1):
    out[f'{dst}fc{r + 1}.weight'] = dense_to_linear(_take(ours, f'{src}Dense_{r}/kernel'))
    out[f'{dst}fc{r + 1}.bias'] = _take(ours, f'{src}Dense_{r}/bias')


def _ln_to_timm(ours: dict[str, np.ndarray], src: str, out: dict[str, np.ndarray],
                dst: str) -> None:
  for a, b in _LN:
    out[f'{dst}.{b}'] = _take(ours, f'{src}/{a}')


def to_timm(flat: Mapping[str, np.ndarray]) -> FlatParams:
  """Our flat ViT/hybrid parameters -> a timm `VisionTransformer` state dict (NumPy values).

  Raises:
    ConversionError: a parameter timm's ViT has no place for (e.g. `pre_logits`: timm dropped
      the representation layer), or a missing one.
  """
  ours = {k: np.asarray(v) for k, v in flat.items()}
  out: FlatParams = {}
  if 'cls' in ours:
    out['cls_token'] = _take(ours, 'cls')
  if 'dist' in ours:  # DeiT's distillation token (timm's VisionTransformerDistilled).
    out['dist_token'] = _take(ours, 'dist')
  if 'reg' in ours:
    out['reg_token'] = _take(ours, 'reg')
  if 'Transformer/posembed_input/pos_embedding' in ours:
    out['pos_embed'] = _take(ours, 'Transformer/posembed_input/pos_embedding')
  if 'conv_root/kernel' in ours:
    _resnet_to_timm(ours, out)
  out['patch_embed.proj.weight'] = conv_to_torch(_take(ours, 'embedding/kernel'))
  out['patch_embed.proj.bias'] = _take(ours, 'embedding/bias')
  for i in range(_num_blocks(ours, rf'^{_BLOCK}(\d+)/')):
    src, dst = f'{_BLOCK}{i}/', f'blocks.{i}.'
    _ln_to_timm(ours, src + 'LayerNorm_0', out, dst + 'norm1')
    _mha_to_timm(ours, f'{src}{_MHA}/', out, dst + 'attn.', ('query', 'key', 'value'), 'qkv')
    _ln_to_timm(ours, src + 'LayerNorm_2', out, dst + 'norm2')
    _mlp_to_timm(ours, src + 'MlpBlock_3/', out, dst + 'mlp.')
    for leaf, theirs in _BLOCK_OPTIONS:
      if src + leaf in ours:
        out[dst + theirs] = _take(ours, src + leaf)
  _ln_to_timm(ours, 'Transformer/encoder_norm', out, 'norm')
  if 'MAPHead_0/probe' in ours:
    out['attn_pool.latent'] = _take(ours, 'MAPHead_0/probe')
    _mha_to_timm(ours, 'MAPHead_0/MultiHeadDotProductAttention_0/', out, 'attn_pool.',
                 ('key', 'value'), 'kv', query='q')
    _ln_to_timm(ours, 'MAPHead_0/LayerNorm_0', out, 'attn_pool.norm')
    _mlp_to_timm(ours, 'MAPHead_0/MlpBlock_0/', out, 'attn_pool.mlp.')
  for head in ('head', 'head_dist'):
    if f'{head}/kernel' in ours:
      out[f'{head}.weight'] = dense_to_linear(_take(ours, f'{head}/kernel'))
      out[f'{head}.bias'] = _take(ours, f'{head}/bias')
  if any(k.startswith('pre_logits/') for k in ours):
    raise ConversionError(
        "timm's VisionTransformer has no representation layer (pre_logits, Dense + tanh before "
        'the head of the ImageNet-21k pre-training files); convert with --drop_head to keep '
        'the feature extractor only')
  _fail_on_leftovers(ours, "timm's VisionTransformer")
  return out


# ---------------------------------------------------------------------------------------------
# timm -> ours.


def _resnet_from_timm(theirs: dict[str, np.ndarray], out: dict[str, np.ndarray]) -> None:
  stem = 'patch_embed.backbone.stem.'
  if stem + 'conv.weight' not in theirs:
    stem = 'patch_embed.backbone.'
  out['conv_root/kernel'] = conv_from_torch(_take(theirs, stem + 'conv.weight'))
  for a, b in _LN:
    out[f'gn_root/{a}'] = _take(theirs, f'{stem}norm.{b}')
  pattern = re.compile(r'^patch_embed\.backbone\.stages\.(\d+)\.blocks\.(\d+)\.')
  units = sorted({(int(m.group(1)), int(m.group(2))) for m in map(pattern.match, theirs) if m})
  for s, u in units:
    src, dst = f'patch_embed.backbone.stages.{s}.blocks.{u}.', f'block{s + 1}/unit{u + 1}/'
    for r in (1, 2, 3):
      out[f'{dst}conv{r}/kernel'] = conv_from_torch(_take(theirs, f'{src}conv{r}.weight'))
      for a, b in _LN:
        out[f'{dst}gn{r}/{a}'] = _take(theirs, f'{src}norm{r}.{b}')
    if f'{src}downsample.conv.weight' in theirs:
      out[f'{dst}conv_proj/kernel'] = conv_from_torch(
          _take(theirs, f'{src}downsample.conv.weight'))
      for a, b in _LN:
        out[f'{dst}gn_proj/{a}'] = _take(theirs, f'{src}downsample.norm.{b}')


def _mha_from_timm(theirs: dict[str, np.ndarray], src: str, out: dict[str, np.ndarray],
                   dst: str, names: tuple[str, ...], fused: str, num_heads: int,
                   query: str | None = None) -> None:
  weight = _take(theirs, f'{src}{fused}.weight')
  bias = _take(theirs, f'{src}{fused}.bias')
  width = weight.shape[1]
  if width % num_heads:
    raise ConversionError(f'Width {width} is not divisible by {num_heads} heads')
  head_dim = width // num_heads
  if weight.shape[0] != len(names) * width:
    raise ConversionError(f'{src}{fused}.weight has shape {weight.shape}; expected '
                          f'({len(names) * width}, {width})')
  for n, w, b in zip(names, np.split(weight, len(names)), np.split(bias, len(names))):
    out[f'{dst}{n}/kernel'] = np.ascontiguousarray(w.T.reshape(width, num_heads, head_dim))
    out[f'{dst}{n}/bias'] = b.reshape(num_heads, head_dim)
  if query is not None:
    out[f'{dst}query/kernel'] = np.ascontiguousarray(
        _take(theirs, f'{src}{query}.weight').T.reshape(width, num_heads, head_dim))
    out[f'{dst}query/bias'] = _take(theirs, f'{src}{query}.bias').reshape(num_heads, head_dim)
  proj = _take(theirs, f'{src}proj.weight')
  out[f'{dst}out/kernel'] = np.ascontiguousarray(proj.T.reshape(num_heads, head_dim, -1))
  out[f'{dst}out/bias'] = _take(theirs, f'{src}proj.bias')


def _mlp_from_timm(theirs: dict[str, np.ndarray], src: str, out: dict[str, np.ndarray],
                   dst: str) -> None:
  for r in (0, 1):
    out[f'{dst}Dense_{r}/kernel'] = dense_to_linear(_take(theirs, f'{src}fc{r + 1}.weight'))
    out[f'{dst}Dense_{r}/bias'] = _take(theirs, f'{src}fc{r + 1}.bias')


def _ln_from_timm(theirs: dict[str, np.ndarray], src: str, out: dict[str, np.ndarray],
                  dst: str) -> None:
  for a, b in _LN:
    out[f'{dst}/{a}'] = _take(theirs, f'{src}.{b}')


def is_timm_vit(keys) -> bool:
  """Whether state-dict keys are a timm ViT (or hybrid) as `to_timm` writes them."""
  keys = set(keys)
  return 'patch_embed.proj.weight' in keys and 'blocks.0.attn.qkv.weight' in keys


def from_timm(state: Mapping[str, np.ndarray], num_heads: int) -> FlatParams:
  """A timm `VisionTransformer` state dict -> our flat parameters.

  Args:
    state: timm keys to NumPy arrays.
    num_heads: attention heads (timm's fused qkv does not show them).

  Raises:
    ConversionError: keys our ViT cannot represent (fc_norm, norm_pre, ...), named in the
      message.
  """
  theirs = {k: np.asarray(v) for k, v in state.items()}
  out: FlatParams = {}
  if 'cls_token' in theirs:
    out['cls'] = _take(theirs, 'cls_token')
  if 'dist_token' in theirs:
    out['dist'] = _take(theirs, 'dist_token')
  if 'reg_token' in theirs:
    out['reg'] = _take(theirs, 'reg_token')
  if 'pos_embed' in theirs:
    out['Transformer/posembed_input/pos_embedding'] = _take(theirs, 'pos_embed')
  if any(k.startswith('patch_embed.backbone.') for k in theirs):
    _resnet_from_timm(theirs, out)
  out['embedding/kernel'] = conv_from_torch(_take(theirs, 'patch_embed.proj.weight'))
  out['embedding/bias'] = _take(theirs, 'patch_embed.proj.bias')
  for i in range(_num_blocks(theirs, r'^blocks\.(\d+)\.')):
    src, dst = f'blocks.{i}.', f'{_BLOCK}{i}/'
    _ln_from_timm(theirs, src + 'norm1', out, dst + 'LayerNorm_0')
    _mha_from_timm(theirs, src + 'attn.', out, f'{dst}{_MHA}/', ('query', 'key', 'value'),
                   'qkv', num_heads)
    _ln_from_timm(theirs, src + 'norm2', out, dst + 'LayerNorm_2')
    _mlp_from_timm(theirs, src + 'mlp.', out, dst + 'MlpBlock_3/')
    for leaf, timm_key in _BLOCK_OPTIONS:
      if src + timm_key in theirs:
        out[dst + leaf] = _take(theirs, src + timm_key)
  _ln_from_timm(theirs, 'norm', out, 'Transformer/encoder_norm')
  if 'attn_pool.latent' in theirs:
    out['MAPHead_0/probe'] = _take(theirs, 'attn_pool.latent')
    _mha_from_timm(theirs, 'attn_pool.', out, 'MAPHead_0/MultiHeadDotProductAttention_0/',
                   ('key', 'value'), 'kv', num_heads, query='q')
    _ln_from_timm(theirs, 'attn_pool.norm', out, 'MAPHead_0/LayerNorm_0')
    _mlp_from_timm(theirs, 'attn_pool.mlp.', out, 'MAPHead_0/MlpBlock_0/')
  for head in ('head', 'head_dist'):
    if f'{head}.weight' in theirs:
      out[f'{head}/kernel'] = dense_to_linear(_take(theirs, f'{head}.weight'))
      out[f'{head}/bias'] = _take(theirs, f'{head}.bias')
  _fail_on_leftovers(theirs, 'Our VisionTransformer')
  return out
