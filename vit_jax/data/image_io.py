"""Reading photos from disk and turning them into model inputs, with Pillow only (no TensorFlow).

Used by the command-line tools (`classify`, `visualize`); training data goes through the TF input
pipeline instead.
"""

from __future__ import annotations

import os
from typing import BinaryIO, Sequence

import numpy as np
from PIL import Image
from PIL import ImageOps
from PIL import UnidentifiedImageError

# Pixel statistics on the [0, 1] scale, for models trained with mean/std normalisation (the
# training pipeline's `normalize` op reads the same table).
MEAN_STD = {
    'imagenet': ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    'cifar10': ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
}
IMAGENET_MEAN, IMAGENET_STD = MEAN_STD['imagenet']
# The value ranges of the Google releases: [-1, 1] (ViT, hybrids) and [0, 1] (BiT).
VALUE_RANGES = {'minus_one_one': (-1., 1.), 'zero_one': (0., 1.)}
NORMALIZATIONS = tuple(VALUE_RANGES) + tuple(MEAN_STD)

# A normalisation: one of NORMALIZATIONS, or (mean, std) per channel on the [0, 1] scale.
Normalization = str | tuple[Sequence[float], Sequence[float]]


class ImageError(ValueError):
  """A file that is not an image Pillow can decode."""


def _to_rgb(image: Image.Image) -> Image.Image:
  """Any Pillow mode -> 8-bit RGB; transparent pixels are composited onto white."""
  if image.mode in ('I', 'I;16', 'I;16B', 'I;16L', 'F'):
    # 16-bit and float greyscale: Pillow's convert('L') clips instead of rescaling, which turns
    # most 16-bit photos white. Scale the stored range to 0..255 instead.
    values = np.asarray(image, dtype=np.float64)
    top = 65535. if image.mode.startswith('I;16') else max(float(values.max()), 1.)
    if image.mode == 'F' and values.max() <= 1.:
      top = 1.
    grey = np.clip(values / top * 255. + .5, 0, 255).astype(np.uint8)
    return Image.fromarray(grey).convert('RGB')
  if image.mode in ('RGBA', 'LA', 'PA') or (image.mode == 'P' and 'transparency' in image.info):
    # Transparent pixels keep whatever colour the file stores (often black); a white background
    # is what viewers show, and what the photo was meant to look like.
    rgba = image.convert('RGBA')
    background = Image.new('RGBA', rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert('RGB')
  return image.convert('RGB')


def read_image(source: str | os.PathLike | BinaryIO, name: str | None = None) -> np.ndarray:
  """Reads an image file as (height, width, 3) uint8 RGB.

  Greyscale, palette, CMYK, 16-bit and alpha images are converted; the EXIF orientation is
  applied, so phone photos come out upright.

  Args:
    source: a local file path, or a binary file open for reading (the tools open images on any
      storage through `checkpoint.paths` and hand them over here).
    name: what messages call the file (default: the path, or the file's name).

  Raises:
    FileNotFoundError: nothing at path `source`.
    ImageError: the file is not an image Pillow can decode (names the file and the reason).
  """
  if isinstance(source, (str, os.PathLike)):
    source = os.fspath(source)
    if not os.path.exists(source):
      raise FileNotFoundError(f'Image not found: {source}')
    if os.path.isdir(source):
      raise ImageError(f'{source} is a directory, not an image file')
  name = name or (source if isinstance(source, str) else getattr(source, 'name', 'the image'))
  try:
    with Image.open(source) as image:
      image.load()  # Decodes now, so that truncated files fail here rather than later.
      image = ImageOps.exif_transpose(image)
      return np.asarray(_to_rgb(image), dtype=np.uint8)
  except UnidentifiedImageError as e:
    raise ImageError(f'{name} is not an image file Pillow can read') from e
  except (OSError, SyntaxError, ValueError) as e:  # Truncated or corrupt data.
    raise ImageError(f'{name} could not be decoded: {e}') from e


def resize(image: np.ndarray, size: int | Sequence[int]) -> np.ndarray:
  """Bilinear resize of a uint8 HWC image to `size` (square side, or (height, width)).

  Like the original library's evaluation (`tf.image.resize` to the crop size), the aspect ratio
  is not kept. Pillow's bilinear filter widens with the scale factor when shrinking (antialias),
  where TF's plain bilinear samples 4 pixels; on photos the two differ by a few grey levels.
  """
  height, width = (size, size) if isinstance(size, int) else size
  if image.shape[:2] == (height, width):
    return image
  return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def normalize(image: np.ndarray, normalization: Normalization = 'minus_one_one') -> np.ndarray:
  """uint8 HWC -> float32 model input.

  Args:
    image: uint8 pixels.
    normalization: 'minus_one_one' ((x - 127.5) / 127.5, the Google ViT and hybrid models),
      'zero_one' (x / 255, BiT), a name of MEAN_STD ('imagenet': Swin, DeiT and most timm models;
      'cifar10'), or an explicit (mean, std) pair on the [0, 1] scale.
  """
  x = image.astype(np.float32)
  if normalization == 'minus_one_one':
    return (x - 127.5) / 127.5
  if normalization == 'zero_one':
    return x / 255.
  mean, std = (np.asarray(v, np.float32) for v in mean_std(normalization))
  return (x / 255. - mean) / std


def mean_std(stats: str | tuple[Sequence[float], Sequence[float]],
             ) -> tuple[Sequence[float], Sequence[float]]:
  """(mean, std) on the [0, 1] scale of a name of MEAN_STD, or of an explicit pair."""
  if not isinstance(stats, str):
    return stats
  if stats not in MEAN_STD:
    raise ValueError(f'Unknown mean/std statistics {stats!r}; expected one of '
                     f'{", ".join(MEAN_STD)} or a (mean, std) pair')
  return MEAN_STD[stats]


def normalization_name(mean: Sequence[float], std: Sequence[float]) -> Normalization:
  """The name of (mean, std) where it is a known normalisation, else the pair itself."""
  for name, (vmin, vmax) in VALUE_RANGES.items():
    if np.allclose(mean, -vmin / (vmax - vmin)) and np.allclose(std, 1. / (vmax - vmin)):
      return name
  for name, stats in MEAN_STD.items():
    if np.allclose(mean, stats[0]) and np.allclose(std, stats[1]):
      return name
  return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def load_batch(images: Sequence[str | os.PathLike | BinaryIO | np.ndarray],
               size: int | Sequence[int], normalization: Normalization = 'minus_one_one',
               ) -> tuple[np.ndarray, np.ndarray]:
  """Reads (`read_image`; arrays are taken as read), resizes and normalises images: returns
  (inputs float32 NHWC, resized uint8 NHWC)."""
  pixels = np.stack([resize(p if isinstance(p, np.ndarray) else read_image(p), size)
                     for p in images])
  return np.stack([normalize(p, normalization) for p in pixels]), pixels
