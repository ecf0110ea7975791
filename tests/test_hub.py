"""Hub names (`checkpoint.hub`) resolved by `huggingface_hub` itself, offline, from a cache the
test builds in the library's own layout (`hub_home`, `tests/hub_cache.py`)."""

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import pytest

import hub_cache
from vit_jax.checkpoint import hub
from vit_jax.checkpoint.errors import CheckpointError

TIMM = hub_cache.TIMM_REPO
HF = hub_cache.HF_REPO


def _sha256(path):
  with open(path, 'rb') as f:
    return hashlib.sha256(f.read()).hexdigest()


@pytest.mark.parametrize('name, expected', [
    ('hf://timm/vit_base', hub.HubName('timm/vit_base', None, None)),
    ('hf-hub:timm/vit_base', hub.HubName('timm/vit_base', None, None)),
    ('hf-hub:timm/vit_base@v1.0', hub.HubName('timm/vit_base', 'v1.0', None)),
    ('hf://google/vit-b@refs%2Fpr%2F3/sub/model.safetensors',
     hub.HubName('google/vit-b', 'refs/pr/3', 'sub/model.safetensors')),
])
def test_parse(name, expected):
  assert hub.parse(name) == expected
  assert hub.parse(str(expected)) == expected  # str() writes the canonical hf:// name.


@pytest.mark.parametrize('name', ['hf://vit_base', 'hf://datasets/org/data', 'gs://b/x'])
def test_parse_refuses(name):
  with pytest.raises(ValueError, match='hf://ORG/REPO'):
    hub.parse(name)


def test_timm_repo(hub_home):
  home, commits = hub_home
  for name in (f'hf://{TIMM}', f'hf-hub:{TIMM}', f'hf-hub:{TIMM}@main',
               f'hf://{TIMM}@{commits[TIMM]}'):
    fetched = hub.fetch(name)
    assert fetched.kind == 'timm' and fetched.commit == commits[TIMM]
    assert fetched.path == os.path.join(home, 'hub', 'models--timm--' + TIMM.split('/')[1],
                                        'snapshots', commits[TIMM], 'model.safetensors')
    assert _sha256(fetched.path) == hashlib.sha256(hub_cache.timm_weights()).hexdigest()
    assert fetched.timm == hub.TimmConfig(
        architecture='vit_tiny_patch16_224', num_classes=1000, input_size=(3, 224, 224),
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation='bicubic', crop_pct=0.9,
        label_names=None)
    assert fetched.timm.image_size == (224, 224)
    assert hub.resolve(name) == fetched.path


def test_transformers_repo_is_its_folder(hub_home):
  fetched = hub.fetch(f'hf://{HF}')
  assert fetched.kind == 'transformers' and fetched.timm is None
  assert sorted(os.listdir(fetched.path)) == ['config.json', 'model.safetensors']
  with open(os.path.join(fetched.path, 'config.json')) as f:
    assert json.load(f) == hub_cache.hf_config() == fetched.config


def test_named_file(hub_home):
  fetched = hub.fetch(f'hf://{TIMM}/config.json')
  assert fetched.kind == 'file' and fetched.path.endswith('/config.json')
  assert fetched.timm.num_classes == 1000  # The repo's card comes along.


def test_other_paths_pass_through():
  assert hub.resolve('gs://b/model.npz') == 'gs://b/model.npz'
  assert hub.resolve('model.npz') == 'model.npz'


def test_missing_file_lists_what_the_repo_holds(hub_home):
  with pytest.raises(hub.HubError, match=(
      rf'hf://{TIMM}/nope.bin: the repository {TIMM} \(revision main\) has no nope.bin; in the '
      r'local cache .* it holds: config.json, model.safetensors')):
    hub.fetch(f'hf://{TIMM}/nope.bin')


def test_missing_weights_name_both_files(hub_home):
  home, _ = hub_home
  hub_cache.add_repo(home, 'org/config-only', {'config.json': json.dumps(
      hub_cache.timm_config()).encode()})
  with pytest.raises(hub.HubError, match='has no model.safetensors or pytorch_model.bin; .* '
                     'holds: config.json'):
    hub.fetch('hf://org/config-only')


def test_weights_fall_back_to_pytorch_model_bin(hub_home):
  home, _ = hub_home
  hub_cache.add_repo(home, 'org/bin-only', {
      'config.json': json.dumps(hub_cache.hf_config()).encode(), 'pytorch_model.bin': b'pickle'})
  fetched = hub.fetch('hf://org/bin-only')
  assert sorted(os.listdir(fetched.path)) == ['config.json', 'pytorch_model.bin']


def test_missing_repo_and_revision(hub_home):
  with pytest.raises(hub.HubError, match='org/absent is not in the local cache .*holds no '
                     'revision of it.*HF_HUB_OFFLINE'):
    hub.fetch('hf://org/absent')
  with pytest.raises(hub.HubError, match=f'revision v2 of {TIMM} .*cached revisions: main'):
    hub.fetch(f'hf-hub:{TIMM}@v2')


def test_config_that_is_neither_timm_nor_transformers(hub_home):
  home, _ = hub_home
  hub_cache.add_repo(home, 'org/odd', {'config.json': b'{"hidden_size": 3}'})
  with pytest.raises(CheckpointError, match='neither pretrained_cfg'):
    hub.fetch('hf://org/odd')
  bad = hub_cache.timm_config()
  del bad['pretrained_cfg']['mean']
  hub_cache.add_repo(home, 'org/bad-timm', {'config.json': json.dumps(bad).encode(),
                                            'model.safetensors': b'x'})
  with pytest.raises(CheckpointError, match='lacks mean'):
    hub.fetch('hf://org/bad-timm')


def test_environment_alone_points_a_new_process_at_the_cache(hub_home):
  """As a user runs it: HF_HOME and HF_HUB_OFFLINE read by huggingface_hub at its import."""
  script = textwrap.dedent(f'''
      from vit_jax.checkpoint import hub
      print(hub.resolve('hf-hub:{TIMM}'))
  ''')
  out = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                       check=True, env=dict(os.environ)).stdout.strip()
  assert out == hub.fetch(f'hf://{TIMM}').path and out.startswith(hub_home[0])


def test_the_one_loader_reads_what_comes_back(hub_home):
  from vit_jax.models import loader  # pylint: disable=g-import-not-at-top
  timm = hub.fetch(f'hf-hub:{TIMM}')
  read = loader.read_file(timm.path, model_name='ViT-Ti_16')
  assert read.format == 'timm' and read.params['head/kernel'].shape == (192, 1000)
  transformers = hub.fetch(f'hf://{HF}')
  read = loader.read_file(transformers.path)
  assert read.format == 'hf' and read.params['head/kernel'].shape == (192, 1000)
