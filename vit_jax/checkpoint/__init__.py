"""Checkpoints: reading, writing, converting and fitting parameters to models.

Names at the package level mirror the original library (`load`, `save`, `load_pretrained`,
`inspect_params`, `interpolate_posembed`) so research code written against it keeps working.
Imports neither TensorFlow nor torch. The modules:

  errors        one hierarchy: CheckpointError (a ValueError) > StateDictError, ConversionError
                > SwinCheckpointError
  tree          nested <-> flat `/`-joined parameters, scanned <-> per-block encoders
  files         the one atomic writer (`atomic_path`), `.npz` and state-dict readers/writers
  layout        `.npz` layouts (key maps) and the original ViT/hybrid one
  bit_npz       BiT's TF-style `.npz` layout
  big_vision    big_vision's `.npz` layout (SigLIP image towers, FlexiViT)
  swin_keys     Swin torch state dicts (official, timm) <-> our parameters
  timm_keys     ViT/hybrid <-> timm state dicts
  hf_keys       ViT <-> Hugging Face `transformers` checkpoints
  npz           `load` / `save` over every `.npz` layout
  resize        position embeddings, Swin bias tables, FlexiViT patch kernels
  pretrained    `inspect_params`, `load_pretrained` (npz families), `load_pretrained_swin`
  architecture  the architecture parameters describe (ViT, hybrid, Swin)
  torch_models  the timm counterparts of our models; `timm_import` imports timm safely

The ground floor of the package: it imports nothing of `vit_jax` outside itself. The file
formats `convert` reads and the one loader that builds a model from a file are in `models/`.

One meaning for a `.npz`: a flat `/`-keyed parameter tree in one of `npz.LAYOUTS` (the original
ViT/hybrid names, BiT's, big_vision's). For Swin that is our parameter tree as `save` and a
training export write it; official and timm Swin weights are torch state dicts (`.pth`,
`.safetensors`). The rule for the other meaning: an `.npz` whose keys are all dotted torch names
(none holds a `/`) is a state dict saved with numpy, read as a Swin state dict (official or
timm layout); any other such file is refused with an error naming its unknown keys.
"""

from vit_jax.checkpoint.errors import CheckpointError
from vit_jax.checkpoint.errors import ConversionError
from vit_jax.checkpoint.errors import StateDictError
from vit_jax.checkpoint.errors import SwinCheckpointError
from vit_jax.checkpoint.files import atomic_path
from vit_jax.checkpoint.files import read_state_dict
from vit_jax.checkpoint.files import write_state_dict
from vit_jax.checkpoint.layout import Layout
from vit_jax.checkpoint.layout import VIT_LAYOUT
from vit_jax.checkpoint.npz import LAYOUTS
from vit_jax.checkpoint.npz import load
from vit_jax.checkpoint.npz import save
from vit_jax.checkpoint.pretrained import inspect_params
from vit_jax.checkpoint.pretrained import load_pretrained
from vit_jax.checkpoint.pretrained import load_pretrained_swin
from vit_jax.checkpoint.resize import interpolate_posembed
from vit_jax.checkpoint.tree import flatten
from vit_jax.checkpoint.tree import stack_encoder
from vit_jax.checkpoint.tree import unflatten
from vit_jax.checkpoint.tree import unstack_encoder
