"""Swin Transformer model configs by name (Liu et al. 2021, Table 1 and the official configs).

`SwinTransformer(num_classes=..., **config)` builds the model. Names without a suffix are the
224 px models (window 7); `-384` names use window 12 for 384 px inputs, the official fine-tuning
resolution.
"""

import ml_collections


# name: (embed_dim, depths, num_heads)
_VARIANTS = {
    'T': (96, (2, 2, 6, 2), (3, 6, 12, 24)),
    'S': (96, (2, 2, 18, 2), (3, 6, 12, 24)),
    'B': (128, (2, 2, 18, 2), (4, 8, 16, 32)),
    'L': (192, (2, 2, 18, 2), (6, 12, 24, 48)),
}
# Image size: window size, as released.
_WINDOWS = {224: 7, 384: 12}


def swin_config(variant: str, image_size: int = 224, *,
                name: str | None = None) -> ml_collections.ConfigDict:
  """A Swin config, e.g. `swin_config('B', 384)` is Swin-B with window 12."""
  if variant not in _VARIANTS:
    raise ValueError(f'Unknown Swin variant {variant!r}; expected one of {sorted(_VARIANTS)}')
  if image_size not in _WINDOWS:
    raise ValueError(f'No released Swin window for {image_size} px; expected one of '
                     f'{sorted(_WINDOWS)} (pass window_size to the model for other sizes)')
  embed_dim, depths, heads = _VARIANTS[variant]
  config = ml_collections.ConfigDict()
  config.model_name = name or (f'Swin-{variant}' if image_size == 224
                               else f'Swin-{variant}-{image_size}')
  config.embed_dim = embed_dim
  config.depths = depths
  config.num_heads = heads
  config.window_size = _WINDOWS[image_size]
  config.patch_size = 4
  config.mlp_ratio = 4.0
  config.dropout_rate = 0.0
  config.attention_dropout_rate = 0.0
  config.stochastic_depth = 0.0
  return config


def _zoo() -> dict[str, ml_collections.ConfigDict]:
  configs = {}
  for variant in _VARIANTS:
    for image_size in _WINDOWS:
      config = swin_config(variant, image_size)
      configs[config.model_name] = config
  return configs


CONFIGS = _zoo()
