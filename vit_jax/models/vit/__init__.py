"""The ViT family: plain ViTs (`model.VisionTransformer`), the ResNet+ViT hybrids, their zoo and
record, and their conversion (timm and Hugging Face key maps, architecture from parameter
shapes, timm's counterpart)."""
