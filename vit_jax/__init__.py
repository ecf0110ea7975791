"""vit_jax: the Vision Transformer paper family (ViT, BiT, hybrids, Swin) in JAX/Flax.

Data flow: `configs/` (experiment) -> `input_pipeline` -> `models` -> `train` -> `checkpoint`.
Importing the package imports no TensorFlow or torch; only the input pipeline uses TensorFlow.
"""
