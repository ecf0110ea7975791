"""The checkpoint package's guarantees: one atomic writer, one state-dict reader, one error
hierarchy, one meaning of an `.npz`, family records instead of name switches."""

import os
import subprocess

import numpy as np
import pytest

from vit_jax import checkpoint
from vit_jax import models
from vit_jax.checkpoint import big_vision
from vit_jax.checkpoint import files
from vit_jax.checkpoint import tree
from vit_jax.models import loader
from vit_jax.models.swin import timm_keys as swin_keys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Interrupted(Exception):
  pass


def _interrupting_savez(*args, **kwargs):
  del kwargs
  args[0].write(b'PK\x03\x04 half a zip')  # Some bytes reach the disk, then the writer dies.
  raise _Interrupted()


def _writers(tmp_path):
  params = {'a': np.ones(3, np.float32)}
  return {
      'npz': lambda: checkpoint.save(params, tmp_path / 'x.npz'),
      'big_vision': lambda: big_vision.save(
          {'embedding': {'kernel': np.ones((2, 2, 3, 4), np.float32)}}, tmp_path / 'bv.npz'),
      'safetensors': lambda: files.write_state_dict({'a': np.ones(3)}, tmp_path / 'x.safetensors'),
  }


@pytest.mark.parametrize('writer', ['npz', 'big_vision', 'safetensors'])
def test_an_interrupted_write_leaves_no_file(tmp_path, monkeypatch, writer):
  import safetensors.numpy  # pylint: disable=g-import-not-at-top

  def interrupting_save_file(state, path, metadata=None):
    del state, metadata
    with open(path, 'wb') as f:
      f.write(b'half a header')
    raise _Interrupted()

  monkeypatch.setattr(np, 'savez', _interrupting_savez)
  monkeypatch.setattr(safetensors.numpy, 'save_file', interrupting_save_file)
  with pytest.raises(_Interrupted):
    _writers(tmp_path)[writer]()
  assert os.listdir(tmp_path) == []  # Neither the target nor the temporary file.


def test_an_interrupted_torch_write_keeps_the_old_file(tmp_path, monkeypatch):
  torch = pytest.importorskip('torch')
  path = tmp_path / 'x.pth'
  files.write_state_dict({'a': np.ones(3, np.float32)}, path)

  def interrupting_save(obj, f):
    del obj
    with open(f, 'wb') as out:
      out.write(b'half')
    raise _Interrupted()

  monkeypatch.setattr(torch, 'save', interrupting_save)
  with pytest.raises(_Interrupted):
    files.write_state_dict({'a': np.zeros(3, np.float32)}, path)
  assert os.listdir(tmp_path) == ['x.pth']
  np.testing.assert_array_equal(files.read_state_dict(path)['a'], np.ones(3))


@pytest.mark.parametrize('wrapper', [None, 'model', 'state_dict', 'model_state_dict', 'module',
                                     'model_ema', 'state_dict_ema'])
def test_every_wrapper_unwraps(tmp_path, wrapper):
  torch = pytest.importorskip('torch')
  tensors = {'module.fc.weight': torch.ones(2, 3), 'fc.bias': torch.zeros(2, dtype=torch.bfloat16)}
  data = tensors if wrapper is None else {wrapper: tensors, 'epoch': 3}
  torch.save(data, tmp_path / 'w.pth')
  state = files.read_state_dict(tmp_path / 'w.pth')
  assert sorted(state) == ['fc.bias', 'fc.weight']
  assert state['fc.bias'].dtype == np.float32


def test_live_weights_win_over_ema(tmp_path):
  torch = pytest.importorskip('torch')
  torch.save({'state_dict_ema': {'w': torch.zeros(1)}, 'state_dict': {'w': torch.ones(1)}},
             tmp_path / 'w.pth')
  np.testing.assert_array_equal(files.read_state_dict(tmp_path / 'w.pth')['w'], [1.])


def test_state_dict_errors_are_checkpoint_errors(tmp_path):
  torch = pytest.importorskip('torch')
  torch.save({'epoch': 3, 'optimizer': {'lr': 0.1}}, tmp_path / 'no_tensors.pth')
  with pytest.raises(checkpoint.StateDictError, match='holds no tensors.*epoch'):
    files.read_state_dict(tmp_path / 'no_tensors.pth')
  (tmp_path / 'bad.pth').write_bytes(b'junk')
  with pytest.raises(checkpoint.CheckpointError, match='bad.pth'):
    files.read_state_dict(tmp_path / 'bad.pth')
  with pytest.raises(checkpoint.StateDictError, match='checkpoint.load'):
    files.read_state_dict(_touch(tmp_path / 'x.npz'))
  for error in (checkpoint.StateDictError, checkpoint.ConversionError):
    assert issubclass(error, checkpoint.CheckpointError) and issubclass(error, ValueError)


def _touch(path):
  path.write_bytes(b'')
  return path


def _tiny_swin_params():
  model = models.get_model('Swin-T', num_classes=3, embed_dim=8, depths=(1, 1), num_heads=(1, 2),
                           window_size=2)
  shapes = models.init_shapes(model, (8, 8))['params']
  rng = np.random.default_rng(0)
  return tree.unflatten({k: rng.normal(size=v.shape).astype(np.float32)
                         for k, v in tree.flatten(shapes).items()})


def test_a_swin_npz_is_our_tree_and_dotted_keys_are_a_state_dict(tmp_path):
  params = _tiny_swin_params()
  checkpoint.save(params, tmp_path / 'ours.npz')
  with np.load(tmp_path / 'ours.npz') as data:
    assert all('/' in key for key in data.files)  # Written as our parameter tree.
  np.savez(tmp_path / 'timm.npz', **swin_keys.to_state_dict(params))
  np.savez(tmp_path / 'official.npz', **swin_keys.to_official_state_dict(params))
  for name in ('ours.npz', 'timm.npz', 'official.npz'):
    # Formats are chosen in models/: the loader reads a state dict saved with numpy by the key
    # map of its family (the official layout's merges numbered one stage lower, `head` for
    # timm's `head.fc`: the same tree).
    file = loader.read_file(tmp_path / name)
    assert file.format == 'npz' and sorted(file.params) == sorted(tree.flatten(params)), name
    for key, value in tree.flatten(params).items():
      np.testing.assert_array_equal(file.params[key], value, err_msg=f'{name}: {key}')
  assert sorted(tree.flatten(checkpoint.load(tmp_path / 'ours.npz'))) == sorted(file.params)
  # checkpoint/ names no family: its `load` reads `/`-keyed layouts and points elsewhere.
  with pytest.raises(checkpoint.CheckpointError, match='torch state dict.*models.loader'):
    checkpoint.load(tmp_path / 'official.npz')
  np.savez(tmp_path / 'other.npz', **{'blocks.0.attn.qkv.weight': np.zeros((6, 2))})
  with pytest.raises(checkpoint.ConversionError, match='no key map reads.*blocks.0.attn.qkv'):
    loader.read_file(tmp_path / 'other.npz')
  # A Swin state dict with a key Swin does not have: named.
  np.savez(tmp_path / 'extra.npz', **swin_keys.to_state_dict(params), **{'pos_embed': np.zeros(2)})
  with pytest.raises(checkpoint.ConversionError, match='Not a Swin state dict.*pos_embed'):
    loader.read_file(tmp_path / 'extra.npz')


def test_families_are_looked_up_not_named():
  assert models.of_model('Swin-T') is models.by_name('swin')
  assert models.of_model('R50+ViT-B_16') is models.by_name('vit')
  assert models.model_class('BiT-M-R50x1') is models.by_name('bit').module
  with pytest.raises(KeyError, match='known models'):
    models.of_model('nope')
  assert models.of_params(tree.flatten(_tiny_swin_params())) is models.by_name('swin')
  with pytest.raises(checkpoint.CheckpointError, match='pass the zoo model name'):
    models.of_params({'gn_pre_head/scale': np.zeros(3)})
  every_zoo_entry = sorted(n for f in models.FAMILIES.values() for n in f.model_names)
  assert every_zoo_entry == sorted(models.MODEL_CONFIGS)


@pytest.mark.slow
def test_no_family_name_switches_outside_the_records():
  out = subprocess.run(['grep', '-rn', "'swin'", 'vit_jax', 'scripts'], capture_output=True,
                       text=True, cwd=ROOT, check=False).stdout.splitlines()
  allowed = ('vit_jax/models/registry.py', 'vit_jax/models/swin/')
  assert [l for l in out if not l.startswith(allowed)] == []
