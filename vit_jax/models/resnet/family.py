"""The ResNet v1.5 family record (torchvision's and timm's ResNet)."""

from vit_jax.models import family
from vit_jax.models.resnet import zoo
from vit_jax.models.resnet.model import ResNet

FAMILY = family.Family(
    name='resnet', module=ResNet, configs=zoo.CONFIGS,
    normalization='imagenet',
    load_pretrained=family.load_pretrained_npz, image_size=family.pretraining_size,
    fields_from_params=family.head_fields,
)
