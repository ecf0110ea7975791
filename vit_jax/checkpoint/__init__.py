"""Checkpoints: what every model family shares for reading, writing and fitting parameters.

Names at the package level mirror the original library (`load`, `save`, `load_pretrained`,
`inspect_params`, `interpolate_posembed`) so research code written against it keeps working.
Imports neither TensorFlow nor torch. The modules:

  errors        one hierarchy: CheckpointError (a ValueError) > StateDictError, ConversionError
  tree          nested <-> flat `/`-joined parameters, scanned <-> per-block encoders
  paths         every file read or written, local or on object storage (`gs://`): the one
                atomic writer (`atomic_local_path`), listings, `probe_writable`, Orbax's path
  hub           weights by name from the Hugging Face Hub (`hf://ORG/REPO`, `hf-hub:ORG/REPO`)
  files         `.npz` and state-dict readers/writers, on any storage
  layout        `.npz` layouts (key maps) and the original ViT/hybrid one
  big_transfer  the `.npz` layout of Google's big_transfer files (BiT's releases)
  big_vision    big_vision's `.npz` layout (SigLIP image towers, FlexiViT)
  npz           `load` / `save` over every `.npz` layout
  resize        position embeddings (the original's zoom, FlexiViT's, timm's), patch kernels
  pretrained    `inspect_params`, `num_classes`, `fit_pretrained` (the original library's fit)
                and `load_pretrained` (reads an `.npz`, then fits)

The ground floor of the package: it imports nothing of `vit_jax` outside itself, and names no
model family. A family's own conversion code (its timm / Hugging Face key maps, its torch
counterpart, reading its architecture from parameter shapes, its own fit) lives in its folder
under `models/`; the file formats `convert` reads and the one loader that builds a model from a
file are in `models/` too.

One meaning for a `.npz`: a flat `/`-keyed parameter tree in one of `npz.LAYOUTS` (the original
ViT/hybrid names, big_transfer's, big_vision's; for every other family our own names, as `save`
and a training export write them). An `.npz` whose keys are all dotted torch names
(`layout.is_state_dict_npz`) is a state dict saved with numpy: `load` refuses it with an error
that points to `models.loader`, which reads it with the key map of the family it belongs to
(`models.formats`).
"""

from vit_jax.checkpoint.errors import CheckpointError
from vit_jax.checkpoint.errors import ConversionError
from vit_jax.checkpoint.errors import StateDictError
from vit_jax.checkpoint.files import read_state_dict
from vit_jax.checkpoint.files import write_state_dict
from vit_jax.checkpoint.layout import Layout
from vit_jax.checkpoint.layout import VIT_LAYOUT
from vit_jax.checkpoint.npz import LAYOUTS
from vit_jax.checkpoint.npz import load
from vit_jax.checkpoint.npz import save
from vit_jax.checkpoint.pretrained import fit_pretrained
from vit_jax.checkpoint.pretrained import inspect_params
from vit_jax.checkpoint.pretrained import load_pretrained
from vit_jax.checkpoint.resize import interpolate_posembed
from vit_jax.checkpoint.tree import flatten
from vit_jax.checkpoint.tree import stack_encoder
from vit_jax.checkpoint.tree import unflatten
from vit_jax.checkpoint.tree import unstack_encoder
