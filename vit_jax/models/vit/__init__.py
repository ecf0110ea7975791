"""The ViT family: plain ViTs (`model.VisionTransformer`), the ResNet+ViT hybrids, their zoo
and record."""
