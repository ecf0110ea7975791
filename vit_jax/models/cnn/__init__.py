"""The CIFAR CNN baseline: `model.CifarCNN`, its zoo and record."""
