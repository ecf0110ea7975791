"""Every attention path honours what flax's attention hands it: dropout, mask and dtype.

`layers.attention_fn` picks a path by platform, dtype and call: cuDNN flash attention (GPUs,
bfloat16), `xla_attention` (TPUs, bfloat16), `jax.nn.dot_product_attention` (masks, float32,
inference on CPUs) and `einsum_attention` (dropout, sown weights, training on CPUs). The
platform is forced with `layers.attention_platform`, so the TPU and GPU choices run here; the
cuDNN kernel itself cannot run on a CPU, which is why a call that reaches it fails here, and
every test that runs on 'gpu' proves that its case was routed elsewhere. The compiled GPU
program is checked in test_aot.py.
"""

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import randomize
from vit_jax import models
from vit_jax.models import layers
from vit_jax.models.vit import model as vit_model

TOKENS, WIDTH, MASKED = 11, 32, 3


class _Attention(nn.Module):
  """flax's multi-head attention with our `attention_fn`, optionally with ViT's qk_norm."""
  qk_norm: bool
  dropout_rate: float = 0.
  dtype: str = 'float32'

  @nn.compact
  def __call__(self, x, kv=None, mask=None, *, deterministic):
    attend = layers.attention_fn
    if self.qk_norm:
      attend = functools.partial(attend, normalize_qk=vit_model.QKNorm(name='qk_norm'))
    return nn.MultiHeadDotProductAttention(
        num_heads=2, dtype=jnp.dtype(self.dtype), dropout_rate=self.dropout_rate,
        broadcast_dropout=False, attention_fn=attend)(
            x, x if kv is None else kv, mask=mask, deterministic=deterministic)


def _setup(qk_norm, dtype='float32', dropout_rate=0.):
  module = _Attention(qk_norm, dropout_rate, dtype)
  x = jax.random.normal(jax.random.key(0), (2, TOKENS, WIDTH))
  params = randomize(module.init(jax.random.key(1), x, deterministic=True)['params'], scale=0.3)
  return module, {'params': params}, x


# (platform, dtype) pairs covering every path that runs on a CPU.
PLATFORMS = [('cpu', 'float32'), ('cpu', 'bfloat16'), ('tpu', 'bfloat16'), ('tpu', 'float32'),
             ('gpu', 'bfloat16'), ('gpu', 'float32')]


@pytest.mark.parametrize('qk_norm', [False, True])
@pytest.mark.parametrize('platform,dtype', PLATFORMS)
def test_attention_dropout_is_applied_on_every_path(platform, dtype, qk_norm):
  module, variables, x = _setup(qk_norm, dtype, dropout_rate=0.5)
  with layers.attention_platform(platform):
    def train(seed):
      return module.apply(variables, x, deterministic=False,
                          rngs={'dropout': jax.random.key(seed)}).astype(jnp.float32)
    first, again, other = train(1), train(1), train(2)
  evaluated = module.apply(variables, x, deterministic=True).astype(jnp.float32)
  np.testing.assert_array_equal(first, again)
  scale = float(jnp.abs(evaluated).max())
  # Half the weights dropped: outputs move by a good part of their size, not by rounding.
  assert float(jnp.abs(first - other).max()) > 0.1 * scale
  if dtype == 'float32':
    # Inverted dropout is unbiased: the mean over many masks is the deterministic output.
    mean = jnp.mean(jax.vmap(train)(jnp.arange(3, 515)), axis=0)
    np.testing.assert_allclose(mean, evaluated, atol=0.1 * scale)


def test_vit_with_qk_norm_applies_attention_dropout():
  """The issue's case: a ViT with qk_norm trained with different dropout keys."""
  outputs = {}
  for qk_norm in (False, True):
    model = models.get_model('ViT-Ti_16', num_classes=5, transformer=dict(
        num_layers=2, dropout_rate=0., attention_dropout_rate=0.5, qk_norm=qk_norm))
    images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    params = randomize(model.init(jax.random.key(1), images)['params'], scale=0.3)
    outputs[qk_norm] = [model.apply({'params': params}, images, train=True,
                                    rngs={'dropout': jax.random.key(seed)}) for seed in (1, 2)]
    if qk_norm:  # The norms' parameters stay where timm-converted checkpoints put them.
      assert set(params['Transformer']['encoderblock_0']['qk_norm']) == {'query_norm',
                                                                          'key_norm'}
  for qk_norm, (a, b) in outputs.items():
    assert float(jnp.abs(a - b).max()) > 1e-3, f'qk_norm={qk_norm}: dropout had no effect'


@pytest.mark.parametrize('qk_norm', [False, True])
@pytest.mark.parametrize('deterministic', [True, False])
@pytest.mark.parametrize('platform,dtype', PLATFORMS)
def test_a_mask_removes_the_masked_keys_on_every_path(platform, dtype, deterministic, qk_norm):
  """Masking the last keys is attending over the other keys only."""
  module, variables, x = _setup(qk_norm, dtype)
  mask = jnp.broadcast_to(jnp.arange(TOKENS) < TOKENS - MASKED, (2, 2, TOKENS, TOKENS))
  with layers.attention_platform(platform):
    masked = module.apply(variables, x, mask=mask, deterministic=deterministic)
  fewer = module.apply(variables, x, x[:, :-MASKED], deterministic=deterministic)
  assert masked.dtype == jnp.dtype(dtype)
  tolerance = 1e-5 if dtype == 'float32' else 2e-2
  np.testing.assert_allclose(np.float32(masked), np.float32(fewer),
                             atol=tolerance * float(jnp.abs(fewer.astype(jnp.float32)).max()))


class _Direct(nn.Module):
  """`attention_fn` called as flax calls it, with a `dtype` other than the inputs'."""
  qk_norm: bool

  @nn.compact
  def __call__(self, q, k, v, **kwargs):
    attend = layers.attention_fn
    if self.qk_norm:
      attend = functools.partial(attend, normalize_qk=vit_model.QKNorm(name='qk_norm'))
    return attend(q, k, v, **kwargs)


@pytest.mark.parametrize('qk_norm', [False, True])
@pytest.mark.parametrize('platform', ['cpu', 'tpu', 'gpu'])
@pytest.mark.parametrize('deterministic', [True, False])
def test_the_dtype_argument_is_the_computation_dtype(platform, deterministic, qk_norm):
  q, k, v = (jax.random.normal(key, (2, TOKENS, 2, 16)) * 2
             for key in jax.random.split(jax.random.key(3), 3))
  module = _Direct(qk_norm)
  variables = module.init(jax.random.key(0), q, k, v, deterministic=True)
  with layers.attention_platform(platform):
    if platform == 'gpu':  # bfloat16 without dropout reaches cuDNN, which a CPU cannot run.
      with pytest.raises(Exception, match='(?i)cudnn'):
        module.apply(variables, q, k, v, deterministic=True, dtype=jnp.bfloat16)
      return
    cast = module.apply(variables, q, k, v, deterministic=deterministic, dtype=jnp.bfloat16)
    low = module.apply(variables, *(t.astype(jnp.bfloat16) for t in (q, k, v)),
                       deterministic=deterministic)
  assert cast.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.float32(cast), np.float32(low))


def test_dropout_without_a_key_is_refused():
  q = jnp.zeros((1, 4, 2, 8))
  with pytest.raises(ValueError, match='dropout_rng'):
    layers.attention_fn(q, q, q, dropout_rate=0.1, deterministic=False)


@pytest.mark.parametrize('kwargs,why', [
    (dict(dropout_rate=0.1, deterministic=False), 'attention dropout'),
    (dict(precision=jax.lax.Precision.HIGHEST, deterministic=True), 'precision'),
])
def test_gpu_cases_cudnn_cannot_take_are_logged_and_run_elsewhere(kwargs, why, caplog):
  q = jax.random.normal(jax.random.key(0), (1, 8, 2, 16)).astype(jnp.bfloat16)
  layers._log_fallback.cache_clear()  # pylint: disable=protected-access
  with layers.attention_platform('gpu'), caplog.at_level('INFO'):
    out = layers.attention_fn(q, q, q, dropout_rng=jax.random.key(1), **kwargs)
  assert out.dtype == jnp.bfloat16
  assert any(why in r.getMessage() and 'not cuDNN' in r.getMessage() for r in caplog.records)


def test_swin_window_attention_applies_its_dropout():
  """Swin writes its attention out (relative-position bias and window mask): dropout too."""
  from vit_jax.models.swin import model as swin_model  # pylint: disable=g-import-not-at-top
  module = swin_model.WindowAttention(num_heads=2, window=(2, 2), attention_dropout_rate=0.5)
  x = jax.random.normal(jax.random.key(0), (2, 3, 4, WIDTH))
  params = randomize(module.init(jax.random.key(1), x, None, deterministic=True)['params'],
                     scale=0.3)
  a, b = (module.apply({'params': params}, x, None, deterministic=False,
                       rngs={'dropout': jax.random.key(s)}) for s in (1, 2))
  assert float(jnp.abs(a - b).max()) > 0.1 * float(jnp.abs(a).max())


@pytest.mark.parametrize('attention_dropout', [0., 0.1])
def test_float32_logits_reach_every_attention_of_the_model(attention_dropout):
  """`transformer.float32_logits`: every layer's and the MAP head's query-key product leaves the
  matmul in float32 (bfloat16 otherwise), in `xla_attention` (TPUs) and in the einsum path
  that training with attention dropout takes."""
  images = jnp.zeros((1, 32, 32, 3))
  found = {}
  for flag in (False, True):
    model = models.get_model('ViT-Ti_16', num_classes=5, dtype='bfloat16', classifier='map',
                             transformer=dict(num_layers=2, float32_logits=flag,
                                              attention_dropout_rate=attention_dropout))
    variables = model.init(jax.random.key(0), images)
    with layers.attention_platform('tpu'):
      text = str(jax.make_jaxpr(lambda v, x: model.apply(
          v, x, train=True, rngs={'dropout': jax.random.key(1)}))(variables, images))
    # Logits are [batch, heads, queries, 4 keys] (flax's einsum adds a unit axis): 4 patches,
    # no [CLS] with MAP pooling, whose probe is 1 query.
    found[flag] = re.findall(r'(f32|bf16)\[1,3,[14](?:,1)?,4\] = dot_general', text)
  assert found[True] == ['f32'] * 3 and found[False] == ['bf16'] * 3
