"""ViT model configs by name, with the fields and values of the original library's zoo.

`models.MODEL_CONFIGS[name]` hands out a fresh copy of an entry, so that
`VisionTransformer(num_classes=..., **config)` builds the model, exactly as with the original
`vit_jax.configs.models`, and no caller can change the zoo.
"""

import ml_collections


# name: (hidden_size, mlp_dim, num_heads, num_layers)
_WIDTHS = {
    'Ti': (192, 768, 3, 12),
    'S': (384, 1536, 6, 12),
    'B': (768, 3072, 12, 12),
    'L': (1024, 4096, 16, 24),
    'H': (1280, 5120, 16, 32),
    # SigLIP's shape-optimised ViT (Alabdulmohsin et al. 2023), with a MAP head.
    'So400m': (1152, 4304, 16, 27),
}
# Zoo names of the original library: (variant, patch).
_VIT_NAMES = (('Ti', 16), ('S', 16), ('S', 32), ('B', 16), ('B', 32), ('B', 8), ('L', 16),
              ('L', 32), ('H', 14))
# The original's `configs/models.py` keeps dropout 0.1 for these (L/32, B/16, B/32 were set to 0:
# "Sets do=0 for B/16, B/32, L/32"); every other entry, attention dropout included, has 0.
_DROPOUT_0_1 = (('L', 16), ('H', 14))


def vit_config(variant: str, patch: int, *, classifier: str = 'token',
               name: str | None = None, dropout_rate: float = 0.0) -> ml_collections.ConfigDict:
  """A plain ViT config, e.g. `vit_config('B', 16)` is ViT-B/16."""
  if variant not in _WIDTHS:
    raise ValueError(f'Unknown ViT variant {variant!r}; expected one of {sorted(_WIDTHS)}')
  hidden, mlp, heads, layers = _WIDTHS[variant]
  config = ml_collections.ConfigDict()
  config.model_name = name or f'ViT-{variant}_{patch}'
  config.patches = ml_collections.ConfigDict({'size': (patch, patch)})
  config.hidden_size = hidden
  config.transformer = ml_collections.ConfigDict()
  config.transformer.mlp_dim = mlp
  config.transformer.num_heads = heads
  config.transformer.num_layers = layers
  config.transformer.attention_dropout_rate = 0.0
  config.transformer.dropout_rate = dropout_rate
  config.classifier = classifier
  config.representation_size = None
  return config


def _zoo() -> dict[str, ml_collections.ConfigDict]:
  configs = {}
  for variant, patch in _VIT_NAMES:
    name = f'ViT-{variant}_{patch}'
    dropout = 0.1 if (variant, patch) in _DROPOUT_0_1 else 0.0
    configs[name] = vit_config(variant, patch, dropout_rate=dropout)
    configs[f'{name}-gap'] = vit_config(variant, patch, classifier='gap', name=f'{name}-gap',
                                        dropout_rate=dropout)
    # The original library's name for the same model ("no representation layer").
    configs[f'{name}-gap-norep'] = vit_config(variant, patch, classifier='gap',
                                              name=f'{name}-gap-norep', dropout_rate=dropout)
  # The CIFAR-10 baseline ViT: 4 layers, width 128, 4 heads, patch 4, MLP 512.
  baseline = vit_config('Ti', 4, name='ViT-CIFAR_4')
  baseline.hidden_size = 128
  baseline.transformer.update(mlp_dim=512, num_heads=4, num_layers=4)
  configs[baseline.model_name] = baseline
  # The SigLIP / SigLIP 2 image tower (big_vision `So400m/14`): no [CLS], MAP pooling.
  configs['ViT-So400m_14'] = vit_config('So400m', 14, classifier='map', name='ViT-So400m_14')
  return configs


CONFIGS = _zoo()
