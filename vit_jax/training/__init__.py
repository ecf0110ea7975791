"""The training job: config → settings → model → steps on the mesh → checkpoints → export.

  base_config, config_args  every config field with its default; `FILE.py:ARGS` parsing
  settings     the config prepared once (checked, normalised, completed, frozen)
  train        `train_and_evaluate`: the loop, resume, metrics, the export
  job          the job built once: model, optimizer, shardings, jitted steps, memory analysis
  step         the train and eval steps, the train state
  evaluators   what the loop evaluates: `config.evals` (classification, few-shot; EMA option)
  optim, sharding, mixup, distill, fewshot   optimizers and schedules, mesh rules, batch
               augmentation, DeiT distillation, few-shot probes
  workdir      Orbax resume, skipped-image counts, `config.json`, the final export

`python -m vit_jax.main` is its command line.
"""
