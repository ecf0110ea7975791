"""Our models against the torch implementations (timm, transformers) on the same weights.

Used by `convert --check` (and the benchmark builds its timm models here too). torch, timm and
transformers are imported inside the functions: importing this module needs none of them.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import numpy as np

from vit_jax import checkpoint
from vit_jax import from_checkpoint
from vit_jax import state_dict_io
from vit_jax.convert_timm import ConversionError

# timm's hybrid ResNet backbones exist only as registered models with these stage layouts (x1).
_TIMM_HYBRIDS = {(): 'vit_tiny_r_s16_p8_224', (2, 2, 2, 2): 'vit_small_r26_s32_224',
                 (3, 4, 9): 'vit_base_r50_s16_224', (3, 4, 6, 3): 'vit_large_r50_s32_224'}
# timm's hybrid conventions (StdConv2dSame eps 1e-8 under the square root, GroupNorm eps 1e-5),
# for our hybrid when it is compared with timm's; see docs on checkpoint formats.
TIMM_HYBRID_CONVENTIONS = dict(conv_eps=1e-8, conv_eps_in_sqrt=True, gn_eps=1e-5)


def _timm():
  from vit_jax.timm_import import import_timm  # pylint: disable=g-import-not-at-top
  return import_timm()


def timm_vit(config: Mapping[str, Any], *, gelu_approximate: bool = True,
             image_size: int = 224) -> Any:
  """timm's VisionTransformer with the architecture of our ViT/hybrid `config`.

  Args:
    config: `VisionTransformer` fields plus `num_classes` (as from_checkpoint infers them).
    gelu_approximate: tanh GELU (the original library) or exact erf (timm's default).
    image_size: input side in pixels.
  """
  timm = _timm()
  transformer = config['transformer']
  pools = {'token': 'token', 'gap': 'avg', 'map': 'map'}
  if config['classifier'] not in pools:
    raise ConversionError(f"timm has no counterpart of classifier {config['classifier']!r}")
  if config.get('representation_size'):
    raise ConversionError('timm ViTs have no representation layer (pre_logits)')
  kwargs = dict(
      img_size=image_size, patch_size=config['patches']['size'][0],
      embed_dim=config['hidden_size'], depth=transformer['num_layers'],
      num_heads=transformer['num_heads'],
      mlp_ratio=transformer['mlp_dim'] / config['hidden_size'],
      num_classes=config.get('num_classes') or 0, class_token=config['classifier'] == 'token',
      global_pool=pools[config['classifier']], fc_norm=False,
      act_layer='gelu_tanh' if gelu_approximate else 'gelu',
      reg_tokens=config.get('reg_tokens') or 0, init_values=transformer.get('init_values'),
      qk_norm=bool(transformer.get('qk_norm')))
  resnet = config.get('resnet')
  if config.get('distilled'):
    if resnet:
      raise ConversionError('timm has no distilled hybrid ViT')
    return timm.models.deit.VisionTransformerDistilled(**kwargs).eval()
  if not resnet:
    return timm.models.vision_transformer.VisionTransformer(**kwargs).eval()
  name = _TIMM_HYBRIDS.get(tuple(resnet['num_layers']))
  if name is None or resnet['width_factor'] != 1:
    raise ConversionError(f"timm has no hybrid with ResNet stages {resnet['num_layers']} x"
                          f"{resnet['width_factor']}")
  return timm.create_model(name, pretrained=False, **kwargs).eval()


def timm_swin(config: Mapping[str, Any]) -> Any:
  """timm's SwinTransformer with the architecture of our Swin `config`."""
  timm = _timm()
  return timm.models.swin_transformer.SwinTransformer(
      img_size=from_checkpoint.swin_image_size(config), patch_size=config['patch_size'],
      embed_dim=config['embed_dim'], depths=tuple(config['depths']),
      num_heads=tuple(config['num_heads']), window_size=config['window_size'],
      mlp_ratio=config['mlp_ratio'], num_classes=config.get('num_classes') or 0).eval()


def _torch_outputs(torch_path: str, fmt: str, family: str, config: Mapping[str, Any],
                   has_pre_logits: bool, images: np.ndarray, gelu_approximate: bool) -> np.ndarray:
  import torch  # pylint: disable=g-import-not-at-top
  pixels = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
  if fmt == 'timm':
    if family == 'swin':
      model = timm_swin(config)
    else:
      model = timm_vit(config, gelu_approximate=gelu_approximate, image_size=images.shape[1])
    state = state_dict_io.read_state_dict(torch_path)
    # The official Swin layout (and old timm) store buffers that current timm rebuilds.
    state = {k: torch.from_numpy(np.array(v)) for k, v in state.items()
             if not k.endswith(('relative_position_index', 'attn_mask'))}
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
      return model(pixels).numpy()
  if fmt == 'hf':
    from vit_jax.timm_import import import_transformers  # pylint: disable=g-import-not-at-top
    transformers = import_transformers()
    with open(os.path.join(torch_path, 'config.json'), encoding='utf-8') as f:
      architecture = json.load(f).get('architectures', ['ViTForImageClassification'])[0]
    if architecture not in ('ViTForImageClassification', 'ViTModel'):
      raise ConversionError(f'Cannot check an HF {architecture}')
    model = getattr(transformers, architecture).from_pretrained(torch_path).eval()
    with torch.no_grad():
      output = model(pixel_values=pixels)
    if architecture == 'ViTForImageClassification':
      return output.logits.numpy()
    if has_pre_logits:
      return output.pooler_output.numpy()
    return output.last_hidden_state[:, 0].numpy()
  raise ConversionError(f'Parity checks compare with timm or HF models, not {fmt!r}')


def max_logit_difference(params: Mapping[str, np.ndarray], torch_path: str, fmt: str, *,
                         gelu_approximate: bool | None = True, batch: int = 2,
                         seed: int = 0) -> float:
  """max |outputs(ours) - outputs(torch model loaded from `torch_path`)| on random images.

  Args:
    params: our flat parameters (original `.npz` keys), the weights in `torch_path`.
    torch_path: a timm state dict (`fmt` 'timm': ViT, hybrid or Swin) or an HF ViT folder
      ('hf': ViTForImageClassification or ViTModel, whose pooler is our representation layer).
    fmt: 'timm' or 'hf'.
    gelu_approximate: the GELU form both sides use (ViT; Swin always uses the exact one).
    batch: number of images, uniform in [-1, 1].
    seed: NumPy seed of the images.

  Our hybrids run with timm's weight-standardisation and GroupNorm epsilons, so that the number
  measures the conversion rather than the two conventions (which move logits by about 1e-4).
  """
  from vit_jax import models  # pylint: disable=g-import-not-at-top
  from vit_jax import models_swin  # pylint: disable=g-import-not-at-top
  flat = checkpoint.unstack_encoder(dict(params))
  gelu_approximate = True if gelu_approximate is None else gelu_approximate
  if from_checkpoint.is_swin(flat):
    family, config = 'swin', from_checkpoint.swin_config_from_params(flat)
    size = from_checkpoint.swin_image_size(config)
    model = models_swin.SwinTransformer(**config)
  else:
    family, config = 'vit', from_checkpoint.vit_config_from_params(flat)
    size, _ = from_checkpoint.vit_image_size(flat, config)
    fields = dict(config)
    fields['transformer'] = {**config['transformer'], 'gelu_approximate': gelu_approximate}
    if fmt == 'timm' and config.get('resnet'):
      fields['resnet'] = {**config['resnet'], **TIMM_HYBRID_CONVENTIONS}
    model = models.VisionTransformer(**fields)
  images = np.random.default_rng(seed).uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)
  ours = np.asarray(model.apply({'params': checkpoint.unflatten(flat)}, images))
  theirs = _torch_outputs(torch_path, fmt, family, config, 'pre_logits/kernel' in flat, images,
                          gelu_approximate)
  if ours.shape != theirs.shape:
    raise ConversionError(f'Output shapes differ: ours {ours.shape}, {fmt} {theirs.shape}')
  return float(np.abs(ours - theirs).max())
