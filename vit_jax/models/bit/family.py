"""BiT's ResNet v2 family record (Kolesnikov et al. 2020)."""

from vit_jax.models import family
from vit_jax.models.bit import zoo
from vit_jax.models.bit.model import ResNetV2

FAMILY = family.Family(
    name='bit', module=ResNetV2, configs=zoo.CONFIGS,
    normalization='zero_one',
    fit_pretrained=family.fit_original, image_size=family.pretraining_size,
    fields_from_params=family.head_fields,
)
