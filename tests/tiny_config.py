"""A seconds-scale training config for the tests (a 1-layer, 32-wide ViT on 32 px images)."""

from vit_jax.training import base_config
from vit_jax.training import config_args


def get_config(arg: str = ''):
  """`arg`: DATASET (default cifar10), and `evals=` as every config."""
  args = config_args.parse_arg(arg, dataset='cifar10')
  config = base_config.get_config()
  config.model_name = 'ViT-CIFAR_4'
  config.model = dict(patches={'size': (8, 8)}, hidden_size=32,
                      transformer={'num_layers': 1, 'mlp_dim': 64, 'num_heads': 2,
                                   'dropout_rate': 0.1})
  config.dataset = args.dataset
  config.download = False
  config.train_split = 'train[:1024]'
  config.image_size = 32
  config.pp_train = 'random_crop(pad=4)|flip_lr|normalize("cifar10")'
  config.pp_eval = 'normalize("cifar10")'
  config.shuffle_buffer = 256
  config.batch_size = 32
  config.eval_batch_size = 64
  config.total_steps = 12
  config.optimizer.name = 'adamw'
  config.optimizer.weight_decay = 0.05
  config.lr.base = 1e-3
  config.lr.warmup_steps = 2
  config.log_every = 4
  config.checkpoint_every = 4
  config.keep_checkpoints = 2
  config.evals = base_config.evaluators(
      test=base_config.evaluator('classification', split='test[:300]', every=12))
  return base_config.finish(config, args)


def for_data(data_overrides, test_eval=None, **overrides):
  """The tiny config on the tests' data (conftest's `data_overrides`), with field overrides;
  `test_eval`: the fields of its `test` evaluator to set (e.g. {'split': 'test[:64]'})."""
  config = get_config(data_overrides['dataset'])
  config.update(data_overrides)
  config.update(overrides)
  config.evals.test.update(test_eval or {})
  return config
