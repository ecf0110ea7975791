"""The model a checkpoint describes: read its architecture from parameter shapes, build it.

The released `.npz` files carry no config, but ViT and hybrid parameters pin the architecture
down: widths, depth, heads (query kernels are (D, heads, D/heads)), patch size, classifier, head
and representation sizes, the ResNet stages of hybrids, and the training resolution (position
embedding grid times the total stride). So do Swin's (heads and window from the relative position
bias tables). The command-line tools use this so that any released or fine-tuned file runs with
at most its zoo name, and converted files (timm, Hugging Face), which have no zoo name, can be
checked against the model they came from.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import checkpoint
from vit_jax import image_io
from vit_jax import models
from vit_jax import models_swin
from vit_jax import workdir

_BLOCK_RE = re.compile(r'^Transformer/encoderblock_(\d+)/')
_UNIT_RE = re.compile(r'^block(\d+)/unit(\d+)/')
_MHA = 'MultiHeadDotProductAttention_1'

# Input normalisation of each model family (see image_io.normalize): the Google ViT, hybrid and
# BiT releases take [-1, 1] and [0, 1] pixels, Swin (and the torchvision-style ResNets and the
# seeds' CIFAR models) ImageNet or dataset mean/std.
NORMALIZATION = {'vit': 'minus_one_one', 'bit': 'zero_one', 'swin': 'imagenet',
                 'resnet': 'imagenet', 'cnn': 'imagenet'}


class LoadedModel(NamedTuple):
  """A model, its parameters, and how to feed it."""
  model: nn.Module
  params: dict[str, Any]
  image_size: tuple[int, int]  # (height, width) the model was trained at
  normalization: image_io.Normalization  # see image_io.normalize
  family: str  # 'vit' (ViT and hybrids), 'swin', 'bit', ...
  model_state: dict[str, Any] = {}  # other variable collections (BatchNorm statistics)
  class_names: tuple[str, ...] | None = None  # from the model card, where it names them

  @property
  def variables(self) -> dict[str, Any]:
    """What `model.apply` takes."""
    return {'params': self.params, **self.model_state}


def _shape(flat: Mapping[str, Any], key: str) -> tuple[int, ...]:
  if key not in flat:
    raise checkpoint.CheckpointError(f'Not a ViT checkpoint: it has no {key!r}')
  return tuple(np.shape(flat[key]))


def is_vit(flat: Mapping[str, Any]) -> bool:
  """Whether flat parameters (unstacked, `/`-joined) are a ViT or hybrid ViT."""
  return 'embedding/kernel' in flat and any(_BLOCK_RE.match(k) for k in flat)


def vit_config_from_params(flat: Mapping[str, Any]) -> dict[str, Any]:
  """The `VisionTransformer` fields (and `num_classes`) that fit flat ViT/hybrid parameters.

  Fields the parameters cannot show keep the original library's values: dropout 0 and the tanh
  approximation of GELU (`transformer.gelu_approximate`).

  Raises:
    CheckpointError: the parameters are not a (complete) ViT.
  """
  flat = checkpoint.unstack_encoder(dict(flat))
  ph, pw, _, hidden = _shape(flat, 'embedding/kernel')
  layers = sorted({int(m.group(1)) for m in map(_BLOCK_RE.match, flat) if m})
  if not layers:
    raise checkpoint.CheckpointError('Not a ViT checkpoint: it has no Transformer/encoderblock_*')
  if layers != list(range(len(layers))):
    raise checkpoint.CheckpointError(f'Encoder block indices {layers} have gaps')
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
      raise checkpoint.CheckpointError(f'Hybrid stages {sorted(units)} have gaps')
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


def vit_image_size(flat: Mapping[str, Any], config: Mapping[str, Any],
                   default: int = 224) -> tuple[int, int]:
  """The resolution a ViT checkpoint was trained at, from its position-embedding grid."""
  key = 'Transformer/posembed_input/pos_embedding'
  if key not in flat:
    return default, default  # sincos2d: any grid works.
  tokens = np.shape(flat[key])[1] - num_prefix_tokens(config)
  side = math.isqrt(tokens)
  if side * side != tokens:
    raise checkpoint.CheckpointError(
        f'The position embedding has {tokens} grid tokens, which is not a square grid; pass the '
        'image size explicitly')
  stride = feature_stride(config)
  return side * stride, side * stride


_SWIN_BLOCK_RE = re.compile(r'^layers_(\d+)/blocks_(\d+)/')


def is_swin(flat: Mapping[str, Any]) -> bool:
  return any(k.endswith('relative_position_bias_table') for k in flat)


def swin_config_from_params(flat: Mapping[str, Any]) -> dict[str, Any]:
  """The `SwinTransformer` fields (and `num_classes`) that fit flat Swin parameters.

  Heads come from the relative position bias tables ((2w - 1)^2, heads), which also give the
  window w; widths and the MLP ratio from the first block's kernels.
  """
  kernel = _shape(flat, 'patch_embed/proj/kernel')
  depths: dict[int, set[int]] = {}
  for match in filter(None, map(_SWIN_BLOCK_RE.match, flat)):
    depths.setdefault(int(match.group(1)), set()).add(int(match.group(2)))
  stages = sorted(depths)
  if not stages or stages != list(range(len(stages))):
    raise checkpoint.CheckpointError(f'Swin stages {stages} are missing or have gaps')
  heads, windows = [], set()
  for i in stages:
    rows, num_heads = _shape(flat, f'layers_{i}/blocks_0/attn/relative_position_bias_table')
    heads.append(num_heads)
    windows.add((math.isqrt(rows) + 1) // 2)
  # Stages whose map fits in one window use a smaller table; the largest is the configured one.
  embed_dim = kernel[-1]
  mlp_hidden = _shape(flat, 'layers_0/blocks_0/mlp/fc1/kernel')[-1]
  return dict(
      embed_dim=embed_dim, depths=tuple(len(depths[i]) for i in stages), num_heads=tuple(heads),
      window_size=max(windows), patch_size=kernel[0], mlp_ratio=mlp_hidden / embed_dim,
      num_classes=_shape(flat, 'head/kernel')[-1] if 'head/kernel' in flat else None)


def swin_image_size(config: Mapping[str, Any]) -> int:
  """The released resolution of a Swin config: the last stage's map is one window."""
  window = config['window_size']
  window = window if isinstance(window, int) else window[0]
  return window * config['patch_size'] * 2**(len(config['depths']) - 1)


def _num_classes(flat: Mapping[str, Any]) -> int | None:
  """Head size of any family: the last axis of the head kernel (Dense or 1x1 conv)."""
  heads = [k for k in flat if k.split('/')[0] == 'head' and k.endswith('kernel')]
  return int(np.shape(flat[heads[0]])[-1]) if heads else None


def _tuples(value: Any) -> Any:
  """JSON lists back to the tuples that configs hold."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def load_file(path: str, model_name: str | None = None, *,
              image_size: int | tuple[int, int] | None = None,
              normalization: image_io.Normalization | None = None,
              **overrides: Any) -> LoadedModel:
  """The model of an `.npz` file, with the state and model card a training run exports beside it.

  Files without a card (the released checkpoints) are read as `load_model` reads parameters.
  Arguments as `load_model`'s; explicit ones win over the card.
  """
  return load_model(checkpoint.load(path), model_name, image_size=image_size,
                    normalization=normalization, card=workdir.read_card(path),
                    model_state=workdir.read_state(path), **overrides)


def _check_card(card: Mapping[str, Any], flat: Mapping[str, Any],
                model_name: str | None) -> None:
  heads = _num_classes(flat)
  if heads is not None and heads != card['num_classes']:
    raise checkpoint.CheckpointError(
        f'The model card says {card["num_classes"]} classes, but the checkpoint\'s head has '
        f'{heads}: the card belongs to another model')
  if model_name is not None and model_name != card['model_name']:
    raise checkpoint.CheckpointError(
        f'The model card says the model is {card["model_name"]!r}, not {model_name!r}')


def load_model(params: Mapping[str, Any], model_name: str | None = None, *,
               image_size: int | tuple[int, int] | None = None,
               normalization: image_io.Normalization | None = None,
               card: Mapping[str, Any] | None = None,
               model_state: Mapping[str, Any] | None = None,
               **overrides: Any) -> LoadedModel:
  """Builds the model that fits `params` (a nested tree, e.g. from `checkpoint.load`).

  Args:
    params: the checkpoint's parameters.
    model_name: a zoo name; its config is used, with the head and representation sizes taken
      from the checkpoint (so a ViT-B_16 name fits both ImageNet-21k and fine-tuned files). May
      be left out for ViT, hybrid and Swin checkpoints and for files with a model card; needed
      for the ResNets otherwise.
    image_size: overrides the resolution read from the card or the checkpoint.
    normalization: overrides the card's pixel normalisation and the family default (see
      `image_io.normalize`; timm's DeiT weights want 'imagenet', Google's ViTs 'minus_one_one').
    card: the model card of a training export (`workdir.read_card`): zoo name, config overrides,
      classes, image size and normalisation.
    model_state: non-parameter variables (BatchNorm statistics, `workdir.read_state`); required
      for models that have them.
    **overrides: further config fields, e.g. `sow_weights=True`.

  Raises:
    CheckpointError: the parameters (or state) do not fit the model (every problem named), the
      card contradicts them, or no model can be inferred from them.
  """
  flat = checkpoint.flatten(params)
  if card is not None:
    _check_card(card, flat, model_name)
    model_name = card['model_name']
    overrides = {**_tuples(card['model_overrides']), **overrides}
    image_size = image_size or tuple(card['image_size'])
    if normalization is None:
      normalization = workdir.card_normalization(card)
  if model_name is None and is_swin(flat):
    config = swin_config_from_params(flat)
    family = 'swin'
    model = models_swin.SwinTransformer(num_classes=config.pop('num_classes'),
                                        model_name='Swin (from checkpoint)',
                                        **{**config, **overrides})
  elif model_name is None:
    if not is_vit(checkpoint.unstack_encoder(flat)):
      raise checkpoint.CheckpointError(
          'Cannot infer the model from these parameters (only ViT, hybrid and Swin '
          'architectures can be read from parameter shapes); pass the zoo model name')
    config = vit_config_from_params(flat)
    num_classes = config.pop('num_classes')
    family = 'vit'
    name = 'ViT (from checkpoint)'
    transformer = {**config.pop('transformer'), **overrides.pop('transformer', {})}
    model = models.VisionTransformer(num_classes=num_classes, transformer=transformer,
                                     model_name=name, **{**config, **overrides})
  else:
    family = models.MODEL_FAMILIES.get(model_name)
    if family is None:
      models.model_class(model_name)  # Raises KeyError naming the known models.
    fields = dict(overrides)
    if family == 'vit':
      config = vit_config_from_params(flat)
      fields.setdefault('representation_size', config['representation_size'])
      if config.get('distilled'):
        fields.setdefault('distilled', True)
      num_classes = config['num_classes']
    else:
      num_classes = _num_classes(flat)
    model = models.get_model(model_name, num_classes=num_classes, **fields)

  if image_size is None:
    if family == 'vit':
      image_size = vit_image_size(flat, vit_config_from_params(flat))
    elif family == 'swin':
      image_size = swin_image_size({'window_size': model.window_size,
                                    'patch_size': model.patch_size, 'depths': model.depths})
    else:
      image_size = 224  # BiT and the ResNets take any size; 224 is their pre-training one.
  if isinstance(image_size, int):
    image_size = (image_size, image_size)

  dummy = jnp.zeros((1, *image_size, 3), jnp.float32)
  all_shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), dummy))
  shapes = all_shapes['params']
  state = {}
  for collection, expected_state in all_shapes.items():
    if collection in ('params', 'intermediates'):
      continue
    if not model_state or collection not in model_state:
      raise checkpoint.CheckpointError(
          f'{model_name or "The model"} has {collection!r} (e.g. BatchNorm statistics), but none '
          'were given: a training export keeps them in <name>_state.npz beside the parameters')
    state[collection] = checkpoint.inspect_params(params=model_state[collection],
                                                  expected=expected_state)
  # Zero-strided stand-ins: inspect_params reads shapes and dtypes, never values.
  expected = jax.tree.map(lambda s: np.broadcast_to(np.zeros((), s.dtype), s.shape), shapes)
  scanned = any(k.startswith('Transformer/encoderblock/') for k in checkpoint.flatten(expected))
  flat = checkpoint.stack_encoder(flat) if scanned else checkpoint.unstack_encoder(flat)
  try:
    params = checkpoint.inspect_params(params=checkpoint.unflatten(flat), expected=expected)
  except checkpoint.CheckpointError as e:
    raise checkpoint.CheckpointError(
        f'{model_name or "The inferred model"} at {image_size[0]}x{image_size[1]}: {e}') from e
  if normalization is None:
    normalization = NORMALIZATION.get(family, 'imagenet')
  names = tuple(card['class_names']) if card and card.get('class_names') else None
  return LoadedModel(model, params, tuple(image_size), normalization, family, state, names)
