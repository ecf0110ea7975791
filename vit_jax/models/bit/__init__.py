"""The BiT family: `model.ResNetV2` (pre-activation, GroupNorm + weight standardisation),
its zoo and record."""
