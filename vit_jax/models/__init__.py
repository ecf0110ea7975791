"""Everything about a model: the registry, shared layers, one folder per family, model files.

  registry    every family and zoo entry: `get_model`, `MODEL_CONFIGS`, `init_shapes`, lookups
  family      the `Family` record a family folder fills in
  layers      layers the families share (attention, MLP, drop path)
  outputs     the output contract: `apply` gives logits; features and DeiT's two heads by name
  vit/ swin/ bit/ resnet/ cnn/   each: `model.py` (the Flax module), `zoo.py`, `family.py`, and
              the family's own conversion code (ViT, Swin: `architecture.py`, `timm_keys.py`,
              `torch_model.py`; ViT's `hf_keys.py`; Swin's `pretrained.py`, `bias_tables.py`)
  timm_import imports timm / transformers safely, for the torch counterparts and the tests
  card        the model card and state sidecar a training export writes beside its `.npz`
  formats     the file formats `tools.convert` reads and writes
  loader      the one loader: any model file (+ card, state) -> model, variables, how to feed it;
              and fitted to a fresh model for fine-tuning (`load_pretrained`)

As in the original library,
`models.VisionTransformer(num_classes=..., **models.MODEL_CONFIGS[name])` builds a ViT. Imports `checkpoint/` and `data/` only.
"""

from vit_jax.models.outputs import apply_with_outputs
from vit_jax.models.registry import by_name
from vit_jax.models.registry import FAMILIES
from vit_jax.models.registry import Family
from vit_jax.models.registry import get_model
from vit_jax.models.registry import init_shapes
from vit_jax.models.registry import model_class
from vit_jax.models.registry import model_config
from vit_jax.models.registry import MODEL_CONFIGS
from vit_jax.models.registry import MODEL_FAMILIES
from vit_jax.models.registry import of_model
from vit_jax.models.registry import of_params
from vit_jax.models.registry import of_state_dict
from vit_jax.models.vit.model import VisionTransformer
