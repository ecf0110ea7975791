"""The Swin family: `model.SwinTransformer`, its zoo and record."""
