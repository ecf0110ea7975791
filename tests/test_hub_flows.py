"""Weights by name from the Hugging Face Hub, as a user uses them: `classify`, `convert`,
fine-tuning's `pretrained_path` and the distillation teacher take `hf://ORG/REPO` (and timm's
`hf-hub:ORG/REPO`), resolved by `huggingface_hub` itself, offline (`HF_HUB_OFFLINE=1`), from a
cache the test builds in the library's own layout (`hub_home`, `tests/hub_cache.py`). The timm
repo holds the real ViT-Ti/16 where the workplace has it, generated weights otherwise; timm's own
model on the same file is the reference.
"""

import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from helpers import REPO
import hub_cache
import tiny_config
from vit_jax import checkpoint
from vit_jax.checkpoint import hub
from vit_jax.models import loader
from vit_jax.training import base_config
from vit_jax.training import distill
from vit_jax.training import step as step_lib

TIMM = hub_cache.TIMM_REPO
HF = hub_cache.HF_REPO


def tool(module, *args, check=True):
  """`python -m vit_jax.tools.MODULE ARGS` in a subprocess (the Hub cache from the environment)."""
  result = subprocess.run([sys.executable, '-m', f'vit_jax.tools.{module}', *args],
                          capture_output=True, text=True, env=dict(os.environ),
                          cwd=REPO, check=False)
  if check:
    assert result.returncode == 0, result.stdout + result.stderr
  return result


def timm_logits(timm, weights_file, pixels):
  """timm's ViT-Ti/16 on the weights of `weights_file`: logits of NHWC `pixels`."""
  import torch  # pylint: disable=g-import-not-at-top
  from safetensors.torch import load_file  # pylint: disable=g-import-not-at-top
  model = timm.create_model('vit_tiny_patch16_224', pretrained=False, num_classes=1000)
  model.load_state_dict(load_file(weights_file))
  with torch.no_grad():
    return model.eval()(torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy())).numpy()


@pytest.mark.parametrize('spelling', ['hf://', 'hf-hub:'])
def test_a_timm_repo_by_name_runs_as_timm_runs_its_file(hub_home, timm, spelling):
  loaded = loader.load(spelling + TIMM)  # No zoo name: the repo's config.json is the card.
  assert loaded.image_size == (224, 224)
  assert loaded.model.num_classes == 1000
  assert loaded.model.transformer['num_heads'] == 3  # ViT-Ti: from timm's architecture name.
  pixels = np.random.default_rng(0).uniform(-1, 1, (2, 224, 224, 3)).astype(np.float32)
  ours = np.asarray(loaded.model.apply(loaded.variables, pixels, train=False))
  np.testing.assert_allclose(ours, timm_logits(timm, hub.fetch(f'hf://{TIMM}').path, pixels),
                             atol=2e-4, rtol=1e-4)


def test_classify_by_hub_name_prints_timms_top_classes(hub_home, timm, tmp_path):
  rng = np.random.default_rng(1)
  image = tmp_path / 'image.png'  # At the model's size: classify does not resize it.
  Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(image)
  # timm's config.json: mean = std = 0.5.
  pixels = (np.asarray(Image.open(image), np.float32)[None] / 255 - 0.5) / 0.5
  logits = timm_logits(timm, hub.fetch(f'hf://{TIMM}').path, pixels)[0].astype(np.float64)
  scores = np.exp(logits - logits.max())
  scores /= scores.sum()
  expected = np.argsort(-scores)[:3]
  for spelling in ('hf://', 'hf-hub:'):
    out = tool('classify', f'--checkpoint={spelling}{TIMM}', '--top_k=3', str(image)).stdout
    assert out.startswith('1000 classes (imagenet2012 labels)'), out
    ranks = re.findall(r'^\s+\d\.\s+([\d.]+)%  .*  \[(\d+)\]$', out, re.MULTILINE)
    assert [int(index) for _, index in ranks] == expected.tolist(), out
    np.testing.assert_allclose([float(p) for p, _ in ranks], 100 * scores[expected], atol=0.02)


def test_a_missing_repo_or_file_names_it_and_what_the_repo_holds(hub_home, tmp_path):
  image = tmp_path / 'image.png'
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
  result = tool('classify', '--checkpoint=hf://org/absent', str(image), check=False)
  assert result.returncode == 1
  assert 'cannot load hf://org/absent' in result.stderr
  assert 'org/absent is not in the local cache' in result.stderr
  result = tool('classify', f'--checkpoint=hf://{TIMM}/nope.bin', str(image), check=False)
  assert result.returncode == 1
  assert re.search(rf'the repository {TIMM} \(revision main\) has no nope.bin; .*it holds: '
                   'config.json, model.safetensors', result.stderr), result.stderr


@pytest.mark.parametrize('repo, kind', [(TIMM, 'timm'), (HF, 'hf')])
def test_convert_from_a_hub_name(hub_home, tmp_path, repo, kind, timm):
  del timm  # --check needs torch with timm or transformers.
  target = tmp_path / 'model.npz'
  out = tool('convert', f'--from=hf://{repo}', f'--to={target}', '--check').stdout
  assert f'hf://{repo} ({kind}) -> {target} (npz)' in out
  # --check: the Hub's file run by timm or transformers (tools.parity) against the conversion.
  delta = float(re.search(rf'--check: max \|outputs\(ours\) - outputs\({kind}\)\| = (\S+)',
                          out).group(1))
  assert delta < 2e-4, out
  # The reference: the same file of the cache, read by its local path.
  local = loader.read_file(hub.fetch(f'hf://{repo}').path, model_name='ViT-Ti_16')
  converted = checkpoint.flatten(checkpoint.load(target))
  assert sorted(converted) == sorted(local.params)
  for key, value in local.params.items():
    np.testing.assert_array_equal(converted[key], value, err_msg=key)


def _timm_repo_with_head(home, repo, num_classes):
  """A timm repo holding the test's ViT-Ti/16 with a fresh `num_classes` head; its file."""
  from safetensors.numpy import load_file, save  # pylint: disable=g-import-not-at-top
  state = load_file(hub.fetch(f'hf://{TIMM}').path)
  rng = np.random.default_rng(2)
  state['head.weight'] = rng.normal(0, 0.02, (num_classes, 192)).astype(np.float32)
  state['head.bias'] = np.zeros(num_classes, np.float32)
  hub_cache.add_repo(home, repo, {'model.safetensors': save(state),
                                  'config.json': json.dumps(
                                      hub_cache.timm_config(num_classes)).encode()})
  return hub.fetch(f'hf://{repo}').path


def test_a_teacher_by_hub_name(hub_home):
  home, _ = hub_home
  local = _timm_repo_with_head(home, 'org/teacher', 10)
  dist = base_config.distillation(teacher_model='ViT-Ti_16', teacher_path='hf://org/teacher')
  model, variables = distill.load_teacher(dist, 224, 10)
  expected = loader.load(local, 'ViT-Ti_16', image_size=224)
  assert model == expected.model
  jax.tree.map(np.testing.assert_array_equal, variables, expected.variables)


def _finetune_config(data_overrides, pretrained_path, **fields):
  config = tiny_config.for_data(data_overrides)
  config.model_name = 'ViT-Ti_16'
  config.model = {'transformer': {'gelu_approximate': False}}  # timm's weights: exact GELU
  # Learning rate 0: the parameters stay as loaded, so the export is what the job loaded.
  config.update(pretrained_path=pretrained_path, total_steps=2, checkpoint_every=1000,
                log_every=1, batch_size=8, eval_batch_size=8, **fields)
  config.lr.base = 0.
  config.evals.test.update(split='test[:8]', every=2)
  return config


@pytest.mark.slow
def test_finetuning_from_a_hub_name(hub_home, tmp_path, data_overrides):
  from vit_jax.training import train  # pylint: disable=g-import-not-at-top
  config = _finetune_config(data_overrides, f'hf-hub:{TIMM}')
  train.train_and_evaluate(config, str(tmp_path))
  num_classes = 10 if data_overrides['dataset'] == 'cifar10' else 3
  expected, _ = loader.load_pretrained(
      hub.fetch(f'hf://{TIMM}').path, step_lib.create_model(config, num_classes), (32, 32),
      model_name='ViT-Ti_16', seed=config.seed)
  expected = checkpoint.unstack_encoder(checkpoint.flatten(expected))
  exported = checkpoint.flatten(checkpoint.load(tmp_path / 'model.npz'))
  assert sorted(exported) == sorted(expected)
  for key, value in expected.items():
    np.testing.assert_array_equal(exported[key], value, err_msg=key)
  assert f'Loaded pre-trained parameters from hf-hub:{TIMM}' in (
      tmp_path / 'train.0.log').read_text()


@pytest.mark.parametrize('field', ['pretrained_path', 'distillation.teacher_path'])
def test_a_missing_hub_repo_fails_before_the_first_step(hub_home, tmp_path, data_overrides,
                                                        field):
  from vit_jax.training import train  # pylint: disable=g-import-not-at-top
  if field == 'pretrained_path':
    config = _finetune_config(data_overrides, 'hf://org/absent')
  else:
    config = _finetune_config(data_overrides, '', distillation=base_config.distillation(
        teacher_model='ViT-Ti_16', teacher_path='hf://org/absent'))
  with pytest.raises(FileNotFoundError,
                     match=rf'config.{field} not found: .*org/absent is not in the local cache'):
    train.train_and_evaluate(config, str(tmp_path))
  assert not os.path.exists(tmp_path / 'checkpoints')


def test_visualize_by_hub_name(hub_home, tmp_path):
  """`visualize posemb` of a Hub name draws what it draws for the same file by its local path."""
  figures = {}
  for where, checkpoint_arg in (('hub', f'--checkpoint=hf-hub:{TIMM}'),
                                ('local', f'--checkpoint={hub.fetch(f"hf://{TIMM}").path}')):
    output = tmp_path / f'{where}.png'
    out = tool('visualize', 'posemb', checkpoint_arg, '--model=ViT-Ti_16',
               f'--output={output}').stdout
    assert f'Wrote {output}' in out
    figures[where] = np.asarray(Image.open(output))
  np.testing.assert_array_equal(figures['hub'], figures['local'])
