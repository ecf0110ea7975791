"""The same architecture in timm (PyTorch), timed like ours: same batch, resolution, dtype.

torch and timm are imported when a function runs, never by importing this module.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from vit_jax import models


def timm_counterpart(name: str, resolution: int, num_classes: int) -> Any:
  """The timm module of zoo model `name`, randomly initialised, from its family's record."""
  family = models.of_model(name)
  if family.torch_model is None:
    raise ValueError(f'--compare-timm needs a timm counterpart; the {family.name} family of '
                     f'{name} has none')
  config = models.MODEL_CONFIGS[name].to_dict()
  gelu_approximate = config.get('transformer', {}).get('gelu_approximate', True)
  return family.torch_model({**config, 'num_classes': num_classes}, image_size=resolution,
                            gelu_approximate=gelu_approximate)


def measure_timm(name: str, batch: int, resolution: int, num_classes: int, dtype: str,
                 iterations: int, warmup: int,
                 threads: int | None = None) -> tuple[float, float]:
  """(inference, train step) images/second of the timm model, on the device torch sees.

  The train step is torch SGD with momentum 0.9 on the cross-entropy, as ours.
  """
  import torch  # pylint: disable=g-import-not-at-top
  if threads:
    torch.set_num_threads(threads)
  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  model = timm_counterpart(name, resolution, num_classes).to(device)
  images = torch.randn(batch, 3, resolution, resolution, device=device)
  labels = torch.randint(0, num_classes, (batch,), device=device)
  autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == 'bfloat16')

  def timed(call):
    for _ in range(warmup):
      call()
    times = []
    for _ in range(iterations):
      if device == 'cuda':
        torch.cuda.synchronize()
      start = time.perf_counter()
      call()
      if device == 'cuda':
        torch.cuda.synchronize()
      times.append(time.perf_counter() - start)
    return batch / statistics.median(times)

  model.eval()

  def infer():
    with torch.no_grad(), autocast:
      return model(images)

  inference = timed(infer)
  model.train()
  optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

  def train_step():
    optimizer.zero_grad(set_to_none=True)
    with autocast:
      loss = torch.nn.functional.cross_entropy(model(images).float(), labels)
    loss.backward()
    optimizer.step()

  return inference, timed(train_step)
