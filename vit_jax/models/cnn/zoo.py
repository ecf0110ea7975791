"""The CIFAR-10 baseline CNN for CIFAR-10 (3 conv blocks of 32/64/128 channels)."""

import ml_collections


CONFIGS = {
    'CNN-CIFAR': ml_collections.ConfigDict(
        {'model_name': 'CNN-CIFAR', 'channels': (32, 64, 128), 'hidden_size': 256}),
}
