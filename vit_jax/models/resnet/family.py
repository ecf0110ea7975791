"""The ResNet v1.5 family record (torchvision's and timm's ResNet)."""

from vit_jax.models import family
from vit_jax.models.resnet import zoo
from vit_jax.models.resnet.model import ResNet

FAMILY = family.Family(
    name='resnet', module=ResNet, configs=zoo.CONFIGS,
    normalization='imagenet',
    fit_pretrained=family.fit_original, image_size=family.pretraining_size,
    fields_from_params=family.head_fields,
)
