"""vit_jax: Vision Transformer, BiT, hybrid and Swin models in JAX/Flax."""

from setuptools import find_packages, setup

# `gs://` paths (gcsfs) and Hub names (huggingface_hub): an extra, imported only when such a path
# is used, so `pip install -e .` works without them and says `pip install "vit_jax[cloud]"` when
# one is needed. Measured: 72 MB more installed (37 packages: google-cloud-storage, its gRPC
# control API, aiohttp, hf-xet, ...) on the main install's 2.5 GB, and 0.6 s to import gcsfs; kept
# out of the main install also because gcsfs requires the fsspec of its own release (gcsfs
# 2026.10.1: fsspec>=2026.9.0), which would then bind the fsspec of every user's environment.
CLOUD = ['gcsfs', 'huggingface_hub']

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
        'etils[epath]',  # Orbax's paths (`checkpoint.paths.orbax_path`); fsspec comes with it.
        'flax',
        'fsspec',  # Object-store paths (`checkpoint.paths`); the protocol's client is extra.
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
        # The GCS server of the storage tests is pinned: tests/storage_servers.py patches its
        # internals.
        'test': ['pytest', 'pytest-xdist', 'scikit-image', 'safetensors',
                 'gcp-storage-emulator==2026.7.19'] + CLOUD,
        'cloud': CLOUD,
        # Compile-only targets for `python -m vit_jax.aot` (no accelerator needed): libtpu
        # describes TPU slices, the CUDA plugin (with its CUDA libraries, ~5 GB) GPU nodes.
        # Pinned to the jax they were built for.
        'tpu': ['jax[tpu]==0.10.2'],
        'cuda': ['jax[cuda12]==0.10.2'],
    },
    entry_points={'console_scripts': ['vit_jax=vit_jax.main:run']},
)
