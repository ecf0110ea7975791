"""Our models against the torch implementations (timm, transformers) on the same weights.

Used by `convert --check`. Each family's record (`vit_jax.models`) gives its torch counterpart
and the conventions that make ours compute the same function. torch, timm and transformers are
imported inside the functions: importing this module needs none of them.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import numpy as np

from vit_jax import models
from vit_jax.checkpoint import files
from vit_jax.checkpoint import paths
from vit_jax.checkpoint import tree
from vit_jax.checkpoint.errors import ConversionError

_HF_ARCHITECTURES = ('ViTForImageClassification', 'ViTModel')


def _hf_outputs(folder: str, pixels: Any, has_pre_logits: bool) -> np.ndarray:
  import torch  # pylint: disable=g-import-not-at-top
  from vit_jax.models import timm_import  # pylint: disable=g-import-not-at-top
  transformers = timm_import.import_transformers()
  config = json.loads(paths.read_text(paths.join(folder, 'config.json')))
  architecture_name = config.get('architectures', [_HF_ARCHITECTURES[0]])[0]
  if architecture_name not in _HF_ARCHITECTURES:
    raise ConversionError(f'Cannot check an HF {architecture_name}')
  model = getattr(transformers, architecture_name).from_pretrained(folder).eval()
  with torch.no_grad():
    output = model(pixel_values=pixels)
  if architecture_name == 'ViTForImageClassification':
    return output.logits.numpy()
  if has_pre_logits:
    return output.pooler_output.numpy()
  return output.last_hidden_state[:, 0].numpy()


def _timm_outputs(path: str, family: models.Family, config: Mapping[str, Any], pixels: Any,
                  gelu_approximate: bool) -> np.ndarray:
  import torch  # pylint: disable=g-import-not-at-top
  if family.torch_model is None:
    raise ConversionError(f'The {family.name} family has no torch counterpart to check against')
  model = family.torch_model(config, image_size=pixels.shape[-1],
                             gelu_approximate=gelu_approximate)
  # Some layouts (the official Swin release, old timm) store buffers that current timm rebuilds.
  buffers = family.timm.buffers if family.timm is not None else ()
  state = {k: torch.from_numpy(np.array(v)) for k, v in files.read_state_dict(path).items()
           if not k.endswith(buffers)}
  model.load_state_dict(state, strict=True)
  with torch.no_grad():
    return model(pixels).numpy()


def max_logit_difference(params: Mapping[str, np.ndarray], torch_path: str, fmt: str, *,
                         gelu_approximate: bool | None = True, batch: int = 2,
                         seed: int = 0) -> float:
  """max |outputs(ours) - outputs(torch model loaded from `torch_path`)| on random images.

  Args:
    params: our flat parameters (original `.npz` keys), the weights in `torch_path`.
    torch_path: a timm state dict (`fmt` 'timm': ViT, hybrid or Swin) or an HF ViT folder
      ('hf': ViTForImageClassification or ViTModel, whose pooler is our representation layer);
      local or on object storage (copied to a local folder for transformers).
    fmt: 'timm' or 'hf'.
    gelu_approximate: the GELU form both sides use (ViT; Swin always uses the exact one).
    batch: number of images, uniform in [-1, 1].
    seed: NumPy seed of the images.

  Our model runs with the torch side's conventions (`Family.torch_conventions`, e.g. timm's
  hybrid epsilons), so that the number measures the conversion rather than the conventions.
  """
  import torch  # pylint: disable=g-import-not-at-top
  if fmt not in ('timm', 'hf'):
    raise ConversionError(f'Parity checks compare with timm or HF models, not {fmt!r}')
  flat = tree.unstack_encoder(dict(params))
  gelu_approximate = True if gelu_approximate is None else gelu_approximate
  family = models.of_params(flat)
  config = family.config_from_params(flat)
  size = family.image_size(flat, family.build(config))[0]
  model = family.build(config, family.torch_conventions(config, gelu_approximate))
  images = np.random.default_rng(seed).uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)
  ours = np.asarray(model.apply({'params': tree.unflatten(flat)}, images))
  pixels = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
  if fmt == 'timm':
    theirs = _timm_outputs(torch_path, family, config, pixels, gelu_approximate)
  else:
    with paths.local_copy(torch_path) as folder:  # transformers reads local folders only.
      theirs = _hf_outputs(folder, pixels, 'pre_logits/kernel' in flat)
  if ours.shape != theirs.shape:
    raise ConversionError(f'Output shapes differ: ours {ours.shape}, {fmt} {theirs.shape}')
  return float(np.abs(ours - theirs).max())
