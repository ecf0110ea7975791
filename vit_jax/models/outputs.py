"""The models' one output contract: `apply` gives logits; named extras are sown beside them.

Every family's `__call__` returns one array in every mode, train or eval: the logits (a distilled
ViT's are the average of its two heads, as DeiT and timm infer), or the pooled features where the
model has no head (`num_classes=None`). So `model.apply({'params': p}, images)` reads as in the
original library. What a caller may need besides is sown into flax's 'intermediates' collection
under these names, at the top of the tree, so that no caller needs a family's parameter names:

  features     the pooled pre-logits features the head sees: after ViT's `representation_size`
               layer, the class token of a distilled ViT; what `num_classes=None` returns.
               Every family, except ViT's unpooled classifiers, which return the tokens.
  cls_logits   a distilled ViT's class-token head: the one DeiT trains on the labels.
  dist_logits  its distillation-token head: the one DeiT trains on the teacher.

`apply_with_outputs` asks for them and returns them by name. A plain `apply` sows nothing and
costs nothing; `apply(..., mutable=['intermediates'])` returns them as flax sows, a tuple per call
(beside the attention weights of a model built with `sow_weights=True`).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax

COLLECTION = 'intermediates'
FEATURES = 'features'
CLS_LOGITS = 'cls_logits'
DIST_LOGITS = 'dist_logits'
NAMES = (FEATURES, CLS_LOGITS, DIST_LOGITS)


def sow(module: nn.Module, name: str, value: jax.Array) -> None:
  """Records output `name` of `module` (a model's top module) when the caller asked for it."""
  if name not in NAMES:
    raise ValueError(f'Unknown model output {name!r}; expected one of {NAMES}')
  module.sow(COLLECTION, name, value)


def apply_with_outputs(model: nn.Module, variables: Mapping[str, Any], images: jax.Array, *,
                       train: bool = False, mutable: Sequence[str] = (), **kwargs: Any
                       ) -> tuple[jax.Array, dict[str, jax.Array], dict[str, Any]]:
  """`model.apply` with its named outputs.

  Args:
    model: any zoo model.
    variables: what `model.apply` takes ({'params': ..., and e.g. 'batch_stats'}).
    images: (batch, height, width, 3) inputs.
    train: the model's mode.
    mutable: collections the call updates (e.g. ['batch_stats'] in training).
    **kwargs: passed to `model.apply` (e.g. `rngs`).

  Returns:
    (what `model.apply` returns, {name: array} of the outputs the model gave, the updated
    `mutable` collections).
  """
  asked = list(mutable)
  logits, state = model.apply(variables, images, train=train,
                              mutable=asked + [COLLECTION] * (COLLECTION not in asked), **kwargs)
  state = dict(state)
  sown = state[COLLECTION] if COLLECTION in asked else state.pop(COLLECTION, {})
  return logits, {name: sown[name][-1] for name in NAMES if name in sown}, state


def get(named: Mapping[str, jax.Array], name: str, model: nn.Module) -> jax.Array:
  """`named[name]`, or an error saying which outputs `model` gives instead."""
  if name not in named:
    what = getattr(model, 'model_name', None) or type(model).__name__
    raise ValueError(f'{what} gives no {name!r} output (it gives {sorted(named) or "none"}); see '
                     'vit_jax.models.outputs')
  return named[name]
