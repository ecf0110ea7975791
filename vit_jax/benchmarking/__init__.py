"""Benchmarking zoo models: FLOPs, timing, memory, the timm comparison, input-pipeline resume.

`scripts/benchmark.py` is the command line over this package; `suite.run` does what its
flags ask.
No module imports TensorFlow or torch when imported: the input pipeline (TensorFlow) is
imported by `resume` and torch (with timm) by `timm_side` only when their functions run.

- `flops`: analytic ViT FLOPs, XLA's cost and memory analysis, chips' peak FLOP/s;
- `timing`: compiled inference and train-step throughput, global vs windowed attention;
- `memory`: per-device train-step memory, data parallel vs FSDP;
- `timm_side`: the same architecture in timm, timed the same way;
- `resume`: time to the first training batch when a run resumes mid-epoch;
- `report`: the markdown tables and the machine line;
- `suite`: one benchmark run, from the command line's arguments to the tables.
"""
