"""The Swin family: `model.SwinTransformer`, its zoo and record, and its conversion (official and
timm state dicts, architecture from parameter shapes, fitting with bias-table resizing)."""
