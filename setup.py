"""vit_jax: Vision Transformer, BiT, hybrid and Swin models in JAX/Flax."""

from setuptools import find_packages, setup

setup(
    name='vit_jax',
    version='0.1.0',
    description='Vision Transformer family (ViT, BiT, hybrids, Swin) in JAX/Flax, checkpoint-'
                'compatible with the original releases and timm.',
    packages=find_packages(include=['vit_jax', 'vit_jax.*']),
    package_data={'vit_jax': ['data/*.txt', 'aot/targets/*.txtpb']},
    python_requires='>=3.10',
    install_requires=[
        'absl-py',
        'chex',
        'clu',
        'flax',
        'importlib_resources',  # tensorflow-datasets imports it without declaring it.
        'jax',
        'matplotlib',
        'ml-collections',
        'numpy',
        'optax',
        'orbax-checkpoint',
        'pillow',
        'scipy',
        'tensorboard',  # clu's TensorBoard writer needs it; tensorflow-cpu no longer brings it.
        'tensorflow-cpu',
        'tensorflow-datasets',
    ],
    extras_require={
        # torch + timm (oracle tests) are installed by .ci/run: see README for why not here.
        'test': ['pytest', 'pytest-xdist', 'scikit-image', 'safetensors'],
        # Compile-only targets for `python -m vit_jax.aot` (no accelerator needed): libtpu
        # describes TPU slices, the CUDA plugin (with its CUDA libraries, ~5 GB) GPU nodes.
        # Pinned to the jax they were built for.
        'tpu': ['jax[tpu]==0.10.2'],
        'cuda': ['jax[cuda12]==0.10.2'],
    },
    entry_points={'console_scripts': ['vit_jax=vit_jax.main:run']},
)
