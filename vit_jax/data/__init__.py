"""Data: sources, the tf.data pipeline, preprocessing ops, augmentations, image reading, labels.

  input_pipeline  TFDS and image-folder sources; training and evaluation streams (tf.data)
  preprocess      the `pp` op strings (`'inception_crop|flip_lr|value_range(-1, 1)'`)
  augment         RandAugment and random erasing (timm's), on Pillow (`pil_ops`)
  image_io        reading images for the tools, pixel normalisations (no TensorFlow)
  labels          class-name lists of the datasets the released heads were trained on

Imports no other folder of `vit_jax`.
"""
