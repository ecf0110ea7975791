"""Shared fixtures: optional oracles (timm, torch) and helpers for random-weight models."""

import pytest

@pytest.fixture(scope='session')
def timm():
  """The timm module, or a clean skip where torch or timm is not installed."""
  from vit_jax.models.timm_import import import_timm  # pylint: disable=g-import-not-at-top
  try:
    return import_timm()
  except ImportError as e:
    pytest.skip(f'timm oracle unavailable: {e}')

@pytest.fixture(scope='session')
def data_overrides(tmp_path_factory):
  """Real CIFAR-10 slices where the offline copy exists, a generated image folder otherwise.

  Tests never download: TFDS reads the offline copy where the workplace has one.
  """
  from helpers import cifar_dir, make_image_folder  # pylint: disable=g-import-not-at-top
  cifar = cifar_dir()
  if cifar:
    return dict(dataset='cifar10', data_dir=cifar)
  root = make_image_folder(str(tmp_path_factory.mktemp('images')),
                           splits=(('train', 400), ('test', 100)))
  return dict(dataset='imagefolder', data_dir=root)


# ---------------------------------------------------------------------------------------------
# Storage: a GCS server on localhost, and a Hugging Face Hub cache (tests/storage_servers.py,
# tests/hub_cache.py).


@pytest.fixture(scope='module')
def gcs_server():
  """A patched GCS emulator (`storage_servers.GcsServer`) for this test module, with one empty
  bucket, `test-bucket`; this process's clients point at it while the module runs.

  Subprocesses get it through `dict(os.environ, **gcs_server.env)` (or inherit `os.environ`).
  One server per module: tests of a module share its bucket, so each writes under its own
  prefix (`gcs_root`).
  """
  from storage_servers import GcsServer, forget_clients  # pylint: disable=g-import-not-at-top
  with GcsServer(buckets=('test-bucket',)) as server, pytest.MonkeyPatch.context() as patch:
    for key, value in server.env.items():
      patch.setenv(key, value)
    import fsspec.config  # pylint: disable=g-import-not-at-top
    from storage_servers import FSSPEC_GCS  # pylint: disable=g-import-not-at-top
    patch.setitem(fsspec.config.conf, 'gcs', FSSPEC_GCS)  # fsspec read FSSPEC_GCS at import.
    forget_clients()
    yield server
  forget_clients()


@pytest.fixture
def gcs_root(gcs_server, request):
  """`gs://test-bucket/<test name>`: a folder of this test's own on the module's server."""
  import re  # pylint: disable=g-import-not-at-top
  return 'gs://test-bucket/' + re.sub(r'[^A-Za-z0-9_.-]+', '_', request.node.name)


@pytest.fixture
def hub_home(tmp_path, monkeypatch):
  """An `HF_HOME` holding a timm and a transformers ViT-Ti/16 repo (`hub_cache.build`), with
  `HF_HUB_OFFLINE=1`: names resolve from it through `huggingface_hub`'s own code.

  Sets the variables for subprocesses and, as huggingface_hub reads them at its import, its
  constants for this process. Yields (HF_HOME, {repo id: commit}).
  """
  hf = pytest.importorskip('huggingface_hub')
  import huggingface_hub.constants  # pylint: disable=g-import-not-at-top,unused-import
  import hub_cache  # pylint: disable=g-import-not-at-top
  home = str(tmp_path / 'hf_home')
  commits = hub_cache.build(home)
  monkeypatch.setenv('HF_HOME', home)
  monkeypatch.setenv('HF_HUB_OFFLINE', '1')
  monkeypatch.delenv('HF_HUB_CACHE', raising=False)
  monkeypatch.setattr(hf.constants, 'HF_HOME', home)
  monkeypatch.setattr(hf.constants, 'HF_HUB_CACHE', str(tmp_path / 'hf_home' / 'hub'))
  monkeypatch.setattr(hf.constants, 'HF_HUB_OFFLINE', True)
  return home, commits
