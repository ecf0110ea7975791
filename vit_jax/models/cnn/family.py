"""The CIFAR CNN baseline's family record."""

from vit_jax.models import family
from vit_jax.models.cnn import zoo
from vit_jax.models.cnn.model import CifarCNN

FAMILY = family.Family(
    name='cnn', module=CifarCNN, configs=zoo.CONFIGS,
    normalization='imagenet',
    fit_pretrained=family.fit_original, image_size=family.pretraining_size,
    fields_from_params=family.head_fields,
)
