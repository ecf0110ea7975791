"""ViT model: parameter counts against the original library, shapes, options, dtypes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import count_params
from helpers import randomize
from vit_jax import models

# Parameter counts of the original library at 224 px with 1000 classes.
ORIGINAL_COUNTS = {
    'ViT-Ti_16': 5_717_416, 'ViT-S_16': 22_050_664, 'ViT-S_32': 22_878_952,
    'ViT-B_16': 86_567_656, 'ViT-B_32': 88_224_232, 'ViT-B_8': 86_576_872,
    'ViT-L_16': 304_326_632, 'ViT-L_32': 306_535_400, 'ViT-H_14': 632_045_800,
    'ViT-S_16-gap': 22_049_896, 'ViT-B_16-gap': 86_566_120,
    # The original's own names of the gap models.
    'ViT-S_16-gap-norep': 22_049_896, 'ViT-B_16-gap-norep': 86_566_120,
    'ViT-S_32-gap-norep': 22_878_184, 'ViT-B_32-gap-norep': 88_222_696,
}  # The hybrids' counts are in test_hybrid.


@pytest.mark.parametrize('name', sorted(ORIGINAL_COUNTS))
def test_parameter_count_equals_original(name):
  assert count_params(models.get_model(name, num_classes=1000), 224) == ORIGINAL_COUNTS[name]


# The original's `configs/models.py`: transformer (dropout_rate, attention_dropout_rate).
ORIGINAL_DROPOUT = {
    'ViT-Ti_16': (0.0, 0.0), 'ViT-S_16': (0.0, 0.0), 'ViT-S_32': (0.0, 0.0),
    'ViT-B_16': (0.0, 0.0), 'ViT-B_32': (0.0, 0.0), 'ViT-B_8': (0.0, 0.0),
    'ViT-L_16': (0.1, 0.0), 'ViT-L_32': (0.0, 0.0), 'ViT-H_14': (0.1, 0.0),
    'ViT-S_16-gap-norep': (0.0, 0.0), 'ViT-B_16-gap-norep': (0.0, 0.0),
    'ViT-S_32-gap-norep': (0.0, 0.0), 'ViT-B_32-gap-norep': (0.0, 0.0),
    'R+ViT-Ti_16': (0.0, 0.0), 'R50+ViT-B_16': (0.1, 0.0), 'R26+ViT-B_32': (0.0, 0.0),
    'R26+ViT-S_32': (0.0, 0.0), 'R50+ViT-L_32': (0.1, 0.0),
}


@pytest.mark.parametrize('name', sorted(ORIGINAL_DROPOUT))
def test_zoo_dropout_equals_original(name):
  transformer = models.MODEL_CONFIGS[name].transformer
  assert (transformer.dropout_rate, transformer.attention_dropout_rate) == ORIGINAL_DROPOUT[name]
  # Our -gap variants (not in the original) keep their base model's dropout.
  if f'{name}-gap' in models.MODEL_CONFIGS:
    assert models.MODEL_CONFIGS[f'{name}-gap'].transformer.dropout_rate == ORIGINAL_DROPOUT[name][0]


def test_every_vit_zoo_entry_builds_with_original_api():
  for name, config in models.MODEL_CONFIGS.items():
    if models.MODEL_FAMILIES[name] != 'vit' or config.get('resnet') is not None:
      continue
    model = models.VisionTransformer(num_classes=10, **config)
    assert count_params(model, size=config.patches.size[0] * 2) > 0, name


def _tiny(**overrides):
  kw = dict(patches={'size': (4, 4)}, hidden_size=32,
            transformer={'num_layers': 2, 'mlp_dim': 64, 'num_heads': 4})
  for key, value in overrides.items():
    if isinstance(value, dict) and key in kw:
      kw[key] = {**kw[key], **value}
    else:
      kw[key] = value
  return models.get_model('ViT-Ti_16', num_classes=7, **kw)


def test_checkpoint_names_and_shapes_follow_original_layout():
  model = _tiny()
  params = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))['params']
  block = params['Transformer']['encoderblock_1']
  assert set(block) == {'LayerNorm_0', 'MultiHeadDotProductAttention_1', 'LayerNorm_2',
                        'MlpBlock_3'}
  mha = block['MultiHeadDotProductAttention_1']
  assert mha['query']['kernel'].shape == (32, 4, 8)
  assert mha['query']['bias'].shape == (4, 8)
  assert mha['out']['kernel'].shape == (4, 8, 32)
  assert params['Transformer']['posembed_input']['pos_embedding'].shape == (1, 17, 32)
  assert params['cls'].shape == (1, 1, 32)
  assert params['embedding']['kernel'].shape == (4, 4, 3, 32)
  assert not np.any(params['head']['kernel'])  # Zero-initialised head, as the original.


@pytest.mark.parametrize('classifier,prefix', [('token', 1), ('gap', 0), ('map', 0)])
def test_pooling_variants(classifier, prefix):
  model = _tiny(classifier=classifier)
  x = jax.random.normal(jax.random.key(1), (3, 16, 16, 3))
  variables = model.init(jax.random.key(0), x)
  assert model.apply(variables, x).shape == (3, 7)
  posemb = variables['params']['Transformer']['posembed_input']['pos_embedding']
  assert posemb.shape[1] == 16 + prefix
  if classifier == 'map':
    assert 'MAPHead_0' in variables['params']


def test_unpooled_and_feature_outputs():
  x = jnp.ones((2, 16, 16, 3))
  model = _tiny(classifier='token_unpooled')
  assert model.apply(model.init(jax.random.key(0), x), x).shape == (2, 17, 32)
  features = models.get_model('ViT-Ti_16', num_classes=None, patches={'size': (8, 8)})
  assert features.apply(features.init(jax.random.key(0), x), x).shape == (2, 192)


def test_representation_layer_and_head_bias():
  model = _tiny(representation_size=24, head_bias_init=-10.)
  params = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))['params']
  assert params['pre_logits']['kernel'].shape == (32, 24)
  np.testing.assert_array_equal(params['head']['bias'], -10.)


def test_scan_and_remat_compute_the_same_function():
  x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
  plain = _tiny()
  params = plain.init(jax.random.key(0), x)['params']
  params = randomize(params)
  expected = plain.apply({'params': params}, x)
  from vit_jax import checkpoint  # pylint: disable=g-import-not-at-top
  stacked = checkpoint.unflatten(checkpoint.stack_encoder(checkpoint.flatten(params)))
  for kw, p in [({'remat': True}, params), ({'scan': True}, stacked),
                ({'scan': True, 'remat': True}, stacked)]:
    model = _tiny(transformer=kw)
    np.testing.assert_allclose(model.apply({'params': p}, x), expected, atol=1e-5, err_msg=kw)
    grads = jax.grad(lambda p: model.apply({'params': p}, x).sum())(p)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


def test_dropout_and_stochastic_depth_only_in_training():
  model = _tiny(transformer={'dropout_rate': 0.2, 'attention_dropout_rate': 0.2,
                             'stochastic_depth': 0.5})
  x = jax.random.normal(jax.random.key(1), (4, 16, 16, 3))
  params = model.init(jax.random.key(0), x)['params']
  params = randomize(params)
  eval1 = model.apply({'params': params}, x)
  eval2 = model.apply({'params': params}, x, train=False)
  np.testing.assert_array_equal(eval1, eval2)
  train = model.apply({'params': params}, x, train=True, rngs={'dropout': jax.random.key(3)})
  assert not np.allclose(train, eval1)


def test_bfloat16_compute_keeps_float32_params():
  model = _tiny(dtype='bfloat16')
  x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
  params = model.init(jax.random.key(0), x)['params']
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  params = randomize(params)
  out16 = model.apply({'params': params}, x)
  out32 = _tiny().apply({'params': params}, x)
  assert out16.dtype == jnp.float32
  np.testing.assert_allclose(out16, out32, atol=0.1)
  assert not np.array_equal(out16, out32)


def test_sincos_posemb_has_no_parameters():
  model = _tiny(posemb='sincos2d')
  params = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))['params']
  assert 'posembed_input' not in params['Transformer']


def test_attention_weights_are_sown():
  model = _tiny(sow_weights=True)
  x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
  params = model.init(jax.random.key(0), x)['params']
  _, state = model.apply({'params': params}, x, mutable=['intermediates'])
  weights = state['intermediates']['Transformer']['encoderblock_0'][
      'MultiHeadDotProductAttention_1']['attention_weights'][0]
  assert weights.shape == (2, 4, 17, 17)
  np.testing.assert_allclose(weights.sum(-1), 1., atol=1e-5)


def test_a_size_the_patch_does_not_divide_drops_the_remainder_as_the_references(caplog):
  # big_vision's and timm's VALID patch convolution: 19x18 px with 4x4 patches is the 16x16
  # image's 4x4 grid, the last 3 rows and 2 columns unused (SigLIP So400m/14 at 384 px).
  model = _tiny()
  x = jax.random.normal(jax.random.key(1), (2, 19, 18, 3))
  params = model.init(jax.random.key(0), x[:, :16, :16])['params']
  with caplog.at_level('INFO'):
    got = model.apply({'params': params}, x)
    model.apply({'params': params}, x)
  np.testing.assert_array_equal(got, model.apply({'params': params}, x[:, :16, :16]))
  said = [r for r in caplog.records if 'not divisible by the patch size' in r.getMessage()]
  assert len(said) == 1 and 'last 3 rows and 2 columns are dropped' in said[0].getMessage()


def test_bad_input_is_rejected_with_a_clear_error():
  with pytest.raises(KeyError, match='Unknown model'):
    models.get_model('ViT-Q_16', num_classes=1)
  with pytest.raises(TypeError, match='no_such_field'):
    models.get_model('ViT-Ti_16', num_classes=1, no_such_field=1)


def test_training_and_inference_attention_paths_agree_with_numpy():
  """On CPU, training takes flax's einsum attention and inference `jax.nn.dot_product_attention`
  (BENCHMARKS.md, issue 14): both must be the same function, values and gradients."""
  from vit_jax.models import layers
  q, k, v = (np.asarray(jax.random.normal(key, (2, 7, 3, 8)))
             for key in jax.random.split(jax.random.key(0), 3))
  logits = np.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(8)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  expected = np.einsum('bhqk,bkhd->bqhd', weights, v)

  def loss(q, k, v, deterministic):
    out = layers.attention_fn(q, k, v, deterministic=deterministic)
    return jnp.sum(jnp.sin(out)), out

  results = [jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v, d)
             for d in (False, True)]
  (_, train_out), train_grads = results[0]
  (_, infer_out), infer_grads = results[1]
  np.testing.assert_allclose(train_out, expected, atol=1e-5)
  np.testing.assert_allclose(infer_out, expected, atol=1e-5)
  for a, b in zip(train_grads, infer_grads):
    np.testing.assert_allclose(a, b, atol=1e-5)
  # The whole model: train=True without dropout is the inference function.
  model = models.get_model('ViT-Ti_16', num_classes=5)
  images = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  params = randomize(model.init(jax.random.key(2), images, train=False)['params'])
  train_logits = model.apply({'params': params}, images, train=True,
                             rngs={'dropout': jax.random.key(3)})
  np.testing.assert_allclose(train_logits, model.apply({'params': params}, images, train=False),
                             atol=1e-5)


def _attention_inputs(dtype, tokens=13):
  return [jax.random.normal(key, (2, tokens, 3, 8), jnp.float32).astype(dtype) * 2
          for key in jax.random.split(jax.random.key(4), 4)]


def _numpy_attention_vjp(q, k, v, grad_out):
  """Softmax attention and its gradients, by hand in float64 (the oracle)."""
  q, k, v, g = (np.asarray(t, np.float64) for t in (q, k, v, grad_out))
  logits = np.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(q.shape[-1])
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  out = np.einsum('bhqk,bkhd->bqhd', p, v)
  grad_p = np.einsum('bqhd,bkhd->bhqk', g, v)
  grad_logits = p * (grad_p - (grad_p * p).sum(-1, keepdims=True)) / np.sqrt(q.shape[-1])
  return out, (np.einsum('bhqk,bkhd->bqhd', grad_logits, k),
               np.einsum('bhqk,bqhd->bkhd', grad_logits, q), np.einsum('bhqk,bqhd->bkhd', p, g))


# Largest error / largest value, of the output and of the gradients. The bfloat16 bounds sit
# about 1.4x above the errors measured on these inputs: with float32 logits 3.5e-3 (output) and
# 5.4e-3 (gradients), as `jax.nn.dot_product_attention`; with logits rounded to bfloat16 (as
# flax and big_vision do, and `xla_attention` did alone) 1.5e-2 and 1.1e-2, which the float32
# logits' bounds reject. The old bounds, 1% of the largest output and 10% of the largest
# gradient, passed either.
@pytest.mark.parametrize('dtype,float32_logits,out_bound,grad_bound', [
    (jnp.float32, False, 5e-6, 5e-6),
    (jnp.bfloat16, True, 5e-3, 7.5e-3),
    (jnp.bfloat16, False, 2.2e-2, 1.5e-2),
])
def test_xla_attention_values_and_gradients_equal_softmax_attention(dtype, float32_logits,
                                                                   out_bound, grad_bound):
  """197 tokens (ViT-B/16) and peaked logits, against float64 on the same rounded inputs.

  Run op by op, not jitted: each op's result is then rounded to its dtype, as on a TPU. The CPU
  compiler would keep a bfloat16 matmul's float32 result and hide the logits' rounding.
  """
  from vit_jax.models import layers
  keys = jax.random.split(jax.random.key(4), 4)
  q, k, v, g = (jax.random.normal(key, (2, 197, 3, 64)).astype(dtype) for key in keys)
  q = q * 4  # Peaked logits, where the rounding of the logits shows most.
  out, vjp = jax.vjp(lambda *x: layers.xla_attention(*x, float32_logits), q, k, v)
  expected_out, expected_grads = _numpy_attention_vjp(q, k, v, g)
  errors = [np.abs(np.float64(np.float32(got)) - want).max() / np.abs(want).max()
            for got, want in zip((out,) + vjp(g), (expected_out,) + expected_grads)]
  assert out.dtype == dtype and errors[0] < out_bound, errors
  assert max(errors[1:]) < grad_bound, errors
  assert all(grad.dtype == dtype for grad in vjp(g))


def test_xla_attention_keeps_only_low_precision_probabilities_for_the_backward(capsys):
  """bfloat16 attention keeps one tokens x tokens array for the backward pass, in bfloat16;
  autodiff of `jax.nn.dot_product_attention` keeps its float32 exponentials too."""
  from jax import ad_checkpoint  # pylint: disable=g-import-not-at-top
  from vit_jax.models import layers
  q, k, v, _ = _attention_inputs(jnp.bfloat16)

  def square_residuals(fn):
    ad_checkpoint.print_saved_residuals(lambda *x: fn(*x).sum(), q, k, v)
    return [line.split('[')[0] for line in capsys.readouterr().out.splitlines()
            if '13,13]' in line]
  assert square_residuals(layers.xla_attention) == ['bf16']
  assert 'f32' in square_residuals(jax.nn.dot_product_attention)
