"""A Hugging Face Hub cache built by the tests, in `huggingface_hub`'s own layout.

With `HF_HOME` pointing at it and `HF_HUB_OFFLINE=1`, `huggingface_hub` resolves names from it
exactly as from a cache it filled by downloading:

  HF_HOME/hub/models--ORG--NAME/blobs/<sha256 of the file>
                               /snapshots/<40-hex commit>/<filename>  (-> ../../blobs/<sha256>)
                               /refs/<branch>                        (holds the commit)

Two repos stand for the two kinds of the Hub's ViT weights: timm's (`model.safetensors` with
timm's keys, and a `config.json` with `pretrained_cfg`) and transformers' (`config.json` with
`model_type: vit`, and `model.safetensors` with transformers' keys). The weights are the real
ViT-Ti/16 where the workplace has it, else generated, key by key, from the two libraries'
published names (not from our converters, which the tests check against them).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Mapping

import numpy as np

from helpers import REPO

REAL_VIT_TI = os.path.join(REPO, '..', 'shared', 'data', 'weights',
                           'vit_tiny_patch16_224_in1k.safetensors')
TIMM_REPO = 'timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k'
HF_REPO = 'google/vit-tiny-patch16-224'


def add_repo(hf_home: str, repo_id: str, files: Mapping[str, bytes], *, revision: str = 'main',
             commit: str | None = None) -> str:
  """Adds a snapshot of model repo `repo_id` holding `files` under `revision`; its commit."""
  if commit is None:
    digest = hashlib.sha1(repo_id.encode() + revision.encode())
    for name in sorted(files):
      digest.update(name.encode() + hashlib.sha256(files[name]).digest())
    commit = digest.hexdigest()
  root = os.path.join(hf_home, 'hub', 'models--' + repo_id.replace('/', '--'))
  for name, data in files.items():
    sha = hashlib.sha256(data).hexdigest()
    blob = os.path.join(root, 'blobs', sha)
    os.makedirs(os.path.dirname(blob), exist_ok=True)
    with open(blob, 'wb') as f:
      f.write(data)
    link = os.path.join(root, 'snapshots', commit, name)
    os.makedirs(os.path.dirname(link), exist_ok=True)
    if os.path.lexists(link):
      os.remove(link)
    os.symlink(os.path.relpath(blob, os.path.dirname(link)), link)
  os.makedirs(os.path.join(root, 'refs'), exist_ok=True)
  with open(os.path.join(root, 'refs', revision), 'w') as f:
    f.write(commit)
  return commit


def _safetensors(state: Mapping[str, np.ndarray]) -> bytes:
  from safetensors.numpy import save  # pylint: disable=g-import-not-at-top
  return save({k: np.ascontiguousarray(v) for k, v in state.items()}, metadata={'format': 'pt'})


def _vit_tensors(prefix_names, width, depth, mlp, patch, tokens, classes, seed):
  """Random float32 tensors under the names `prefix_names` lists, shaped for a ViT."""
  rng = np.random.default_rng(seed)
  shapes = prefix_names(width, depth, mlp, patch, tokens, classes)
  return {k: (0.02 * rng.standard_normal(s)).astype(np.float32) for k, s in shapes.items()}


def _timm_shapes(width, depth, mlp, patch, tokens, classes):
  shapes = {'cls_token': (1, 1, width), 'pos_embed': (1, tokens, width),
            'patch_embed.proj.weight': (width, 3, patch, patch), 'patch_embed.proj.bias': (width,),
            'norm.weight': (width,), 'norm.bias': (width,),
            'head.weight': (classes, width), 'head.bias': (classes,)}
  for i in range(depth):
    b = f'blocks.{i}.'
    shapes.update({b + 'norm1.weight': (width,), b + 'norm1.bias': (width,),
                   b + 'attn.qkv.weight': (3 * width, width), b + 'attn.qkv.bias': (3 * width,),
                   b + 'attn.proj.weight': (width, width), b + 'attn.proj.bias': (width,),
                   b + 'norm2.weight': (width,), b + 'norm2.bias': (width,),
                   b + 'mlp.fc1.weight': (mlp, width), b + 'mlp.fc1.bias': (mlp,),
                   b + 'mlp.fc2.weight': (width, mlp), b + 'mlp.fc2.bias': (width,)})
  return shapes


def _hf_shapes(width, depth, mlp, patch, tokens, classes):
  e = 'vit.embeddings.'
  shapes = {e + 'cls_token': (1, 1, width), e + 'position_embeddings': (1, tokens, width),
            e + 'patch_embeddings.projection.weight': (width, 3, patch, patch),
            e + 'patch_embeddings.projection.bias': (width,),
            'vit.layernorm.weight': (width,), 'vit.layernorm.bias': (width,),
            'classifier.weight': (classes, width), 'classifier.bias': (classes,)}
  for i in range(depth):
    b = f'vit.encoder.layer.{i}.'
    for name in ('query', 'key', 'value'):
      shapes[f'{b}attention.attention.{name}.weight'] = (width, width)
      shapes[f'{b}attention.attention.{name}.bias'] = (width,)
    shapes.update({b + 'attention.output.dense.weight': (width, width),
                   b + 'attention.output.dense.bias': (width,),
                   b + 'layernorm_before.weight': (width,), b + 'layernorm_before.bias': (width,),
                   b + 'layernorm_after.weight': (width,), b + 'layernorm_after.bias': (width,),
                   b + 'intermediate.dense.weight': (mlp, width),
                   b + 'intermediate.dense.bias': (mlp,),
                   b + 'output.dense.weight': (width, mlp), b + 'output.dense.bias': (width,)})
  return shapes


# ViT-Ti/16 at 224: width 192, 12 blocks, 3 heads, MLP 768, 14 * 14 + 1 tokens.
_TI = dict(width=192, depth=12, mlp=768, patch=16, tokens=197, classes=1000)


def timm_config(num_classes: int = 1000) -> dict:
  """timm's `config.json` of ViT-Ti/16 (augreg in21k fine-tuned on in1k), as the Hub holds it."""
  return {
      'architecture': 'vit_tiny_patch16_224', 'num_classes': num_classes, 'num_features': 192,
      'global_pool': 'token',
      'pretrained_cfg': {
          'tag': 'augreg_in21k_ft_in1k', 'custom_load': True, 'input_size': [3, 224, 224],
          'fixed_input_size': True, 'interpolation': 'bicubic', 'crop_pct': 0.9,
          'crop_mode': 'center', 'mean': [0.5, 0.5, 0.5], 'std': [0.5, 0.5, 0.5],
          'num_classes': num_classes, 'pool_size': None, 'first_conv': 'patch_embed.proj',
          'classifier': 'head'}}


def timm_weights() -> bytes:
  """The real ViT-Ti/16 timm file where present, else random weights under timm's names."""
  if os.path.exists(REAL_VIT_TI):
    with open(REAL_VIT_TI, 'rb') as f:
      return f.read()
  return _safetensors(_vit_tensors(_timm_shapes, seed=0, **_TI))


def hf_config(num_classes: int = 1000) -> dict:
  """transformers' `config.json` of a ViT-Ti/16 classifier."""
  return {'architectures': ['ViTForImageClassification'], 'model_type': 'vit',
          'hidden_size': 192, 'num_hidden_layers': 12, 'num_attention_heads': 3,
          'intermediate_size': 768, 'hidden_act': 'gelu', 'image_size': 224, 'patch_size': 16,
          'num_channels': 3, 'layer_norm_eps': 1e-12, 'qkv_bias': True,
          'id2label': {str(i): f'class_{i}' for i in range(num_classes)},
          'label2id': {f'class_{i}': i for i in range(num_classes)}}


def hf_weights() -> bytes:
  """Random ViT-Ti/16 classifier weights under transformers' names."""
  return _safetensors(_vit_tensors(_hf_shapes, seed=1, **_TI))


def build(hf_home: str) -> dict[str, str]:
  """The timm and transformers repos under `hf_home`; their commits, by repo id."""
  def as_json(config):
    return json.dumps(config, indent=2).encode()
  return {
      TIMM_REPO: add_repo(hf_home, TIMM_REPO, {'model.safetensors': timm_weights(),
                                                'config.json': as_json(timm_config())}),
      HF_REPO: add_repo(hf_home, HF_REPO, {'model.safetensors': hf_weights(),
                                            'config.json': as_json(hf_config())}),
  }
