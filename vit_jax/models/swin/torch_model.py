"""timm's counterpart of our Swin Transformers, for parity checks and benchmarks.

torch and timm are imported inside the function (through `models.timm_import`): importing this
module needs neither.
"""

from __future__ import annotations

from typing import Any, Mapping

from vit_jax.models import timm_import
from vit_jax.models.swin import architecture


def timm_swin(config: Mapping[str, Any], *, image_size: int | None = None) -> Any:
  """timm's SwinTransformer with the architecture of our Swin `config` (plus `num_classes`).

  `image_size` defaults to the released resolution of the config (one window at the last stage).
  """
  timm = timm_import.import_timm()
  return timm.models.swin_transformer.SwinTransformer(
      img_size=image_size or architecture.image_size(config),
      patch_size=config['patch_size'],
      embed_dim=config['embed_dim'], depths=tuple(config['depths']),
      num_heads=tuple(config['num_heads']), window_size=config['window_size'],
      mlp_ratio=config['mlp_ratio'], num_classes=config.get('num_classes') or 0).eval()
