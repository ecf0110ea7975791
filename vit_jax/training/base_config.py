"""Defaults shared by every experiment config in `configs/`; each field documented once here.

Experiment configs start from `get_config()` and override fields, sharing recipes through the
functions below (`cifar10_baseline`, `vit_finetune_recipe`, `timm_imagenet_recipe`), parsing
their `:ARGS` with `training.config_args.parse_arg` and ending with `finish`. Every field can also
be overridden on the command line (`--config.total_steps=100`), and an unknown field is an error.
What they evaluate is `config.evals`: named evaluators, each declared by `evaluator` with every
field of its type (`evaluator_fields`). `training.settings.prepare` turns a config into the job's
settings; these are the only defaults.
"""

from typing import Any, Mapping

import ml_collections
from ml_collections.config_dict import placeholder

from vit_jax import models


def get_config() -> ml_collections.ConfigDict:
  """All training fields with their defaults."""
  config = ml_collections.ConfigDict()
  config.seed = 0

  # Model: a zoo name (vit_jax.models.MODEL_CONFIGS) and, in `model`, the recipe's overrides of
  # its fields, e.g. {'transformer': {'dropout_rate': 0.1}}. `with_model_fields`, the last step of
  # every config file, fills in every other field of the model (`models.model_config`), so any
  # of them can be set on the command line: --config.model.dtype=bfloat16.
  config.model_name = 'ViT-B_16'
  config.model = ml_collections.ConfigDict()
  # An original-format .npz to fine-tune from (position embeddings resized, head reset).
  config.pretrained_path = placeholder(str)
  # How its position embedding is resized to the model's grid: 'zoom' (the original's and
  # big_vision's scipy zoom, right for Google's files), 'timm' (bicubic, antialiased, as timm
  # resizes its weights) or 'flexi' (FlexiViT's run-time linear resize).
  config.posemb_resize = 'zoom'
  # A checkpoint of another patch size is an error unless True: its kernel is then resampled
  # as FlexiViT does (B/32 weights for a B/16 model).
  config.resample_patch_embedding = False

  # Data: a TFDS name (TFDS_DATA_DIR or data_dir), or 'imagefolder' with data_dir=ROOT holding
  # ROOT/<split>/<class>/*.jpg|png. Splits take TFDS slicing, e.g. 'train[:98%]'.
  config.dataset = 'cifar10'
  config.data_dir = placeholder(str)
  config.download = True  # Let TFDS download and prepare a missing dataset.
  config.train_split = 'train'
  config.num_classes = placeholder(int)  # None: from data.
  config.image_size = 224
  # Preprocessing op strings (vit_jax/data/preprocess.py), applied per example; `pp_eval` is the
  # evaluators' (where theirs is None) and the exported model card's.
  config.pp_train = 'inception_crop|flip_lr|value_range(-1, 1)'
  config.pp_eval = 'resize|value_range(-1, 1)'
  config.shuffle_buffer = 50_000
  config.cache_train = False  # Keep the encoded training images in memory (small datasets).
  # An image that cannot be decoded (corrupt, truncated) is logged once and skipped: a zero
  # image with no weight in the loss, counted by the `skipped_images` metric (and by
  # `NAME/skipped` in evaluation). False: it stops the run with an error naming the file.
  config.skip_corrupt_images = True
  # Repeated augmentation (DeiT): each image k times per epoch, differently augmented.
  config.repeated_augmentation = 1
  # Batch-level mixup/cutmix in the train step (vit_jax/training/mixup.py); None disables it.
  config.mixup = placeholder(ml_collections.ConfigDict)
  config.label_smoothing = 0.0
  # big_vision's losses: 'softmax_xent' or 'sigmoid_xent' (independent per-class sigmoids, the
  # ImageNet-21k pre-training loss, where a -10 head bias starts every class near p = 0).
  config.loss = 'softmax_xent'
  # DeiT distillation (vit_jax/training/distill.py), declared by `distillation(...)`; None
  # disables it. The student sets config.model.distilled = True.
  config.distillation = placeholder(ml_collections.ConfigDict)

  # Optimisation. Global batch; accum_steps micro-batches per step to fit small memories.
  config.batch_size = 512
  config.eval_batch_size = 512  # The evaluators' global batch, where theirs is None.
  config.accum_steps = 1
  config.total_steps = 10_000
  config.num_epochs = placeholder(float)  # Overrides steps.
  config.optimizer = ml_collections.ConfigDict(dict(
      name='sgd',  # 'sgd', 'adam' or 'adamw'
      momentum=0.9, nesterov=False,  # 'sgd'
      accumulator_dtype='',  # e.g. 'bfloat16' for the SGD momentum / Adam first moment
      b1=0.9, b2=0.999, eps=1e-8,
      weight_decay=0.0,
      decay_pattern=r'kernel$',  # regex on parameter paths that get weight decay
      decoupled_weight_decay=False,  # big_vision's form: decay scaled by schedule / base lr
  ))
  config.lr = ml_collections.ConfigDict(dict(
      base=0.03, warmup_steps=500,
      decay_type='cosine',  # 'cosine', 'linear', 'constant' or 'piecewise'
      end=1e-5,  # final value of 'linear'
      boundaries=(), scales=(),  # 'piecewise': multiply by scales[i] from step boundaries[i]
  ))
  config.grad_clip_norm = 1.0

  # Devices: mesh axes as (name, size) with -1 for "the remaining devices".
  config.mesh = (('data', -1),)
  # Parameter/optimizer-state sharding rules (vit_jax/training/sharding.py): (regex, spec) pairs.
  config.sharding_rules = ()

  # Bookkeeping.
  config.log_every = 50
  # 0: no periodic checkpoints; the last step and a preemption (SIGTERM) still save one.
  config.checkpoint_every = 1000
  config.keep_checkpoints = 3
  config.export_npz = True  # Also write the final parameters as an original-format .npz.
  # Weight EMA: ema = decay * ema + (1 - decay) * params after every step; 0 disables it. When on,
  # the classification evaluators also report the average (`NAME/ema_accuracy`, ...; their `ema`
  # option) and it is exported as model_ema.npz. BatchNorm statistics get the same average
  # (timm's ModelEmaV3), in model_ema_state.npz.
  config.ema_decay = 0.

  # What the job evaluates: name -> an `evaluator(TYPE, ...)`, each run every `every` steps and at
  # the last one, its metrics written as NAME/METRIC (e.g. test/accuracy, minival/loss). Configs
  # declare theirs; `--config=FILE.py:ARGS,evals=NAME[:TYPE]` adds one on the command line
  # (`finish`), whose fields `--config.evals.NAME.FIELD=...` then sets.
  config.evals = ml_collections.ConfigDict({'test': evaluator('classification')})
  return config


def evaluator_fields(kind: str) -> dict[str, Any]:
  """The fields of an evaluator of type `kind` with their defaults (fresh placeholders).

  Where `dataset`, `data_dir` or `pp` is None, the evaluator reads the job's (`dataset`,
  `data_dir`, `pp_eval`), at the job's `image_size`.

  Raises:
    ValueError: an unknown type, naming the types.
  """
  data = dict(every=1000,  # Steps between evaluations (and the last step); 0: never.
              dataset=placeholder(str), data_dir=placeholder(str), pp=placeholder(str))
  if kind == 'classification':
    # Top-1 and top-5 accuracy and loss over every example of `split`, exactly once
    # (`training.evaluators.Classification`): NAME/accuracy, NAME/top5_accuracy, NAME/loss
    # (NAME/skipped: images that could not be decoded). `batch_size`: global, None: the job's
    # eval_batch_size. `ema`: also the weight EMA's (NAME/ema_accuracy, ...); None: where the
    # job keeps one (config.ema_decay > 0).
    return dict(data, split='test', batch_size=placeholder(int), ema=placeholder(bool))
  if kind == 'fewshot':
    # Few-shot linear probes on the pre-logits features (`training.fewshot`, big_vision's
    # fewshot_lsr): NAME/{n}shot for n in `shots`, drawn from `train_split` with `num_seeds`
    # seeds from `seed` (averaged; big_vision's 3), scored on `test_split`; `batch_size` images
    # per forward pass on each process. `ema`: probe the weight EMA instead.
    return dict(data, train_split='train[:1000]', test_split='test[:1000]',
                shots=(1, 5, 10, 25), l2_reg=2.**10, seed=0, num_seeds=3, batch_size=64,
                ema=False)
  raise ValueError(f'Unknown evaluator type {kind!r}; types: {", ".join(EVALUATOR_TYPES)}')


EVALUATOR_TYPES = ('classification', 'fewshot')


def distillation(**fields: Any) -> ml_collections.ConfigDict:
  """`config.distillation` with every field, `fields` set over the defaults.

  teacher_model: a zoo name; teacher_path: its file (any the one loader reads);
  teacher_overrides: fields the teacher model is built with; kind: 'hard' (the paper's best) or
  'soft'; alpha: the weight of the distillation term; temperature: of 'soft'.

  Raises:
    ValueError: a field distillation does not have (its fields named).
  """
  return _with_fields(dict(teacher_model='', teacher_path='', teacher_overrides={}, kind='hard',
                           alpha=0.5, temperature=1.0), fields, 'config.distillation')


def evaluator(kind: str, **fields: Any) -> ml_collections.ConfigDict:
  """An evaluator of type `kind` with every field of its type, `fields` set over the defaults.

  Raises:
    ValueError: an unknown type (the types named) or a field the type does not have (its fields
      named).
  """
  return _with_fields({'type': kind, **evaluator_fields(kind)}, fields,
                     f'An evaluator of type {kind!r}')


def _with_fields(declared: dict[str, Any], fields: Mapping[str, Any], what: str
                 ) -> ml_collections.ConfigDict:
  """A ConfigDict of the `declared` fields and defaults, `fields` set over them."""
  unknown = sorted(set(fields) - set(declared))
  if unknown:
    raise ValueError(f'{what} has no field {unknown[0]!r}; its fields: {", ".join(declared)}')
  config = ml_collections.ConfigDict(declared)
  config.update(fields)
  return config


def evaluators(**named: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config.evals` of the named evaluators, e.g. evaluators(test=evaluator(...))."""
  return ml_collections.ConfigDict(named)


def cifar10_baseline(config: ml_collections.ConfigDict, quick: bool) -> ml_collections.ConfigDict:
  """The CIFAR-10 baseline recipe, shared by its ViT, its CNN and the DeiT demonstration.

  AdamW lr 3e-4, wd 0.05, batch 128, 50 epochs, random crop 32 with padding 4 + horizontal flip,
  CIFAR mean/std. `quick`: a short schedule (higher lr, 1000 steps) for a 2-core CPU.
  """
  config.dataset = 'cifar10'
  config.train_split = 'train'
  config.image_size = 32
  config.pp_train = 'random_crop(pad=4)|flip_lr|normalize("cifar10")'
  config.pp_eval = 'normalize("cifar10")'
  config.cache_train = True
  config.batch_size = 128
  config.eval_batch_size = 500
  config.num_epochs = 50.
  config.optimizer.name = 'adamw'
  config.optimizer.weight_decay = 0.05
  config.lr.base = 3e-4
  config.lr.warmup_steps = 390  # One epoch.
  config.lr.decay_type = 'cosine'
  config.grad_clip_norm = 0.0
  config.log_every = 100
  config.checkpoint_every = 3900
  config.evals = evaluators(test=evaluator('classification', split='test', every=3900))
  if quick:
    config.num_epochs = None
    config.total_steps = 1000
    config.lr.base = 1e-3
    config.lr.warmup_steps = 100
    config.evals.test.every = 1000
    config.checkpoint_every = 500
  return config


# dataset: (train split, eval split, total steps, warmup steps, base lr)
FINETUNE_PRESETS = {
    'cifar10': ('train[:98%]', 'test', 10_000, 500, 0.03),
    'cifar100': ('train[:98%]', 'test', 10_000, 500, 0.03),
    'imagenet2012': ('train[:99%]', 'validation', 20_000, 500, 0.03),
    'oxford_iiit_pet': ('train[:90%]', 'test', 500, 100, 0.003),
    'oxford_flowers102': ('train[:90%]', 'test', 500, 100, 0.003),
}


def vit_finetune_recipe(config: ml_collections.ConfigDict, model_name: str, dataset: str
                        ) -> ml_collections.ConfigDict:
  """The ViT paper's fine-tuning (the original library's recipe), for plain ViTs and hybrids.

  SGD momentum 0.9, no weight decay, global-norm clip 1, batch 512 (8 micro-batches of 64),
  warmup then cosine (steps and lr from `FINETUNE_PRESETS`), 384 px, Inception crop + flip,
  pixels in [-1, 1]. Evaluated on the eval split every tenth of the run (`test`, or ImageNet's
  `val` with `minival`, the held-out 1% of `train`, as big_vision's).

  Raises:
    ValueError: `dataset` has no preset.
  """
  if dataset not in FINETUNE_PRESETS:
    raise ValueError(f'Unknown fine-tuning dataset {dataset!r}; presets: '
                     f'{sorted(FINETUNE_PRESETS)}')
  train_split, eval_split, steps, warmup, lr = FINETUNE_PRESETS[dataset]
  if (model_name, dataset) == ('ViT-B_16', 'cifar10'):
    lr = 0.01  # The paper's choice for B/16 on CIFAR-10 (recipes.md).
  config.model_name = model_name
  config.dataset = dataset
  config.train_split = train_split
  config.image_size = 384
  config.pp_train = 'inception_crop|flip_lr|value_range(-1, 1)'
  config.pp_eval = 'resize|value_range(-1, 1)'
  config.batch_size = 512
  config.eval_batch_size = 512
  config.accum_steps = 8
  config.total_steps = steps
  config.optimizer.name = 'sgd'
  config.optimizer.momentum = 0.9
  config.optimizer.accumulator_dtype = 'bfloat16'
  config.lr.base = lr
  config.lr.warmup_steps = warmup
  config.lr.decay_type = 'cosine'
  config.grad_clip_norm = 1.0
  config.checkpoint_every = steps // 10
  config.evals = held_out_evaluators(dataset, eval_split, every=steps // 10)
  return config


# All of train: warmup epochs as the official recipes count them.
IMAGENET_TRAIN_EXAMPLES = 1_281_167


def held_out_evaluators(dataset: str, split: str, every: int) -> ml_collections.ConfigDict:
  """`config.evals` of a recipe: classification on `split`, named `val` for ImageNet's
  `validation` (with `minival` on `train[99%:]`, which the recipe leaves out of training, as
  big_vision's ImageNet configs), else `test`."""
  if dataset == 'imagenet2012' and split == 'validation':
    return evaluators(val=evaluator('classification', split=split, every=every),
                      minival=evaluator('classification', split='train[99%:]', every=every))
  return evaluators(test=evaluator('classification', split=split, every=every))


def timm_imagenet_recipe(config: ml_collections.ConfigDict, warmup_epochs: int
                         ) -> ml_collections.ConfigDict:
  """The ImageNet-1k recipe DeiT and Swin share (both trained with timm's script).

  300 epochs at 224 px, batch 1024, AdamW wd 0.05 on kernels, lr 5e-4 x batch/512 with
  `warmup_epochs` of warmup then cosine; timm's RandomResizedCrop (area 8-100%, log aspect
  uniform in 3/4-4/3, bicubic), flip, RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25,
  label smoothing 0.1, mixup 0.8 / cutmix 1.0; eval: PIL-bicubic resize to 256, centre crop 224
  (timm's crop_pct 0.875), on `validation` (`val`) and on a `minival` of 1% held out of `train`,
  as big_vision's ImageNet configs (timm trains on all of `train`). Callers set clipping,
  stochastic depth and their model.
  """
  config.dataset = 'imagenet2012'
  config.train_split = 'train[:99%]'
  config.image_size = 224
  config.pp_train = ('random_resized_crop|flip_lr|randaug("rand-m9-mstd0.5-inc1")|'
                     'normalize("imagenet")|random_erasing(0.25)')
  # PIL's bicubic, which filters when it shrinks (timm's Resize(256), crop_pct 0.875).
  config.pp_eval = ('resize_small(256, method="bicubic", antialias=True)|central_crop|'
                    'normalize("imagenet")')
  config.batch_size = 1024
  config.eval_batch_size = 1000
  config.num_epochs = 300.
  config.optimizer.name = 'adamw'
  config.optimizer.weight_decay = 0.05
  config.optimizer.decay_pattern = r'kernel$'
  config.lr.base = 5e-4 * config.batch_size / 512
  config.lr.warmup_steps = warmup_epochs * (IMAGENET_TRAIN_EXAMPLES // config.batch_size)
  config.lr.decay_type = 'cosine'
  config.label_smoothing = 0.1  # Applied before mixing, as timm's mixup_target does.
  config.mixup = ml_collections.ConfigDict(dict(
      mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, prob=1.0))
  config.log_every = 100
  config.checkpoint_every = 5000
  config.evals = held_out_evaluators('imagenet2012', 'validation', every=5000)
  return config


def _merge_fields(fields: ml_collections.ConfigDict, overrides: Mapping[str, Any],
                  where: str) -> None:
  """Sets `overrides` into `fields` in place, recursing into dict fields; unknown keys raise."""
  for key, value in overrides.items():
    if key not in fields:
      raise ValueError(f'Unknown model field {where}.{key}; known: {", ".join(sorted(fields))}')
    if isinstance(fields[key], ml_collections.ConfigDict) and isinstance(value, Mapping):
      _merge_fields(fields[key], value, f'{where}.{key}')
    else:
      fields[key] = value


def finish(config: ml_collections.ConfigDict, args: ml_collections.ConfigDict
           ) -> ml_collections.ConfigDict:
  """The last step of every config file: the evaluators `args.evals` adds, every model field.

  `args` is the config's `config_args.parse_arg` result; its `evals` ('NAME[:TYPE]' strings, the
  `evals=NAME[:TYPE]+...` config argument) become evaluators with their type's defaults
  (classification where no type is given), so that `--config.evals.NAME.FIELD` sets them.

  Raises:
    ValueError: an evaluator the config already declares, or of an unknown type.
  """
  for spec in args.evals:
    name, _, kind = spec.partition(':')
    if name in config.evals:
      raise ValueError(f'evals={spec!r}: the config already declares config.evals.{name}; set '
                       f'its fields with --config.evals.{name}.FIELD')
    config.evals[name] = evaluator(kind or 'classification')
  return with_model_fields(config)


def with_model_fields(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config.model` as the full field set of `config.model_name` with the recipe's overrides.

  Every config file returns through this (`finish`), so that every model field is a command-line
  override and `model.json` records the whole architecture.

  Raises:
    KeyError: `config.model_name` is not in the zoo.
    ValueError: `config.model` sets a field the model does not have (the known ones named).
  """
  config.model = model_fields(config.model_name, config.model.to_dict())
  return config


def model_fields(model_name: str, overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """Every field of zoo model `model_name` (`models.model_config`), `overrides` set over them.

  Raises:
    KeyError: `model_name` is not in the zoo.
    ValueError: `overrides` sets a field the model does not have (the known ones named).
  """
  fields = models.model_config(model_name)
  _merge_fields(fields, overrides, 'config.model')
  return fields
