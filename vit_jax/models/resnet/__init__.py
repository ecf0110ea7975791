"""The ResNet v1.5 family: `model.ResNet` (BatchNorm), its zoo and record."""
