"""Ahead-of-time compilation for accelerators that are not attached: will the job fit?

`python -m vit_jax.aot --config=... --target=v5e-8 [--fit] [--json=PATH]` compiles the train
and eval steps of an experiment config exactly as `train_and_evaluate` would run them, onto
compile-only TPU or GPU devices, and reports memory per device, collectives, fused attention
kernels, FLOPs and (TPU) the compiler's step-time estimate. Top floor: nothing imports it.

- `targets`: target names (v5e-8, v4-32, h100-8x2 ...) and their compile-only devices;
- `compile_job`: one compile and its `Report`;
- `hlo`: collectives and fused kernels read from the optimized HLO;
- `fit`: the cheapest variant (accumulation, remat, FSDP) that fits.
"""
