"""Commands on model files: classify, visualize (and interpret), convert, fewshot, parity.

Each is `python -m vit_jax.tools.NAME`; every one reads model files through `models.loader`.
Nothing in the library imports this folder.
"""
