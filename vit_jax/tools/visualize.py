r"""Figures that look inside a ViT, and a run's training curves, as PNG files.

  python -m vit_jax.tools.visualize attention --checkpoint=F.npz --image=cat.jpg --output=att.png
  python -m vit_jax.tools.visualize rollout   --checkpoint=F.npz --image=cat.jpg --output=roll.png
  python -m vit_jax.tools.visualize posemb    --checkpoint=F.npz --output=posemb.png
  python -m vit_jax.tools.visualize filters   --checkpoint=F.npz --output=filters.png
  python -m vit_jax.tools.visualize curves    --workdir=/tmp/run --output=curves.png

`attention`: what the class token attends to in the last layer (`--layer` picks another), one
panel per head. `rollout`: attention rollout through all layers (Abnar & Zuidema 2020). `posemb`:
cosine similarity between learned position embeddings (ViT paper, Figure 7 centre). `filters`:
principal components of the patch-embedding filters (Figure 7 left). `curves`: the scalars the
training loop wrote to TensorBoard event files under a workdir. `--model` names the zoo model;
ViT and hybrid architectures are otherwise read from the checkpoint. Checkpoints, images,
workdirs and the output may be local or on object storage (`gs://`, `checkpoint.paths`); the
checkpoint also a Hugging Face Hub name.
"""

from __future__ import annotations

import collections
import posixpath
import struct
import sys
from typing import Any, Mapping, Sequence

from absl import app
from absl import flags
import matplotlib
from matplotlib.figure import Figure
import numpy as np
from PIL import Image

from vit_jax import checkpoint
from vit_jax import models
from vit_jax.checkpoint import paths
from vit_jax.data import image_io
from vit_jax.models import loader
from vit_jax.models.vit import architecture
from vit_jax.tools import classify
from vit_jax.tools import interpret

SUBCOMMANDS = ('attention', 'rollout', 'posemb', 'filters', 'curves')

FLAGS = flags.FLAGS

# ---------------------------------------------------------------------------------------------
# Drawing.


def _upsample(heat: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Bilinear resize of a (h, w) float map to `size` (height, width)."""
  image = Image.fromarray(np.asarray(heat, np.float32), mode='F')
  return np.asarray(image.resize((size[1], size[0]), Image.BILINEAR))


def _overlay(ax: Any, image: np.ndarray, heat: np.ndarray, title: str) -> None:
  """The photo with `heat` (scaled to its own maximum) laid over it."""
  heat = _upsample(heat, image.shape[:2])
  ax.imshow(image)
  ax.imshow(heat / max(float(heat.max()), 1e-12), cmap='inferno', alpha=0.6, vmin=0., vmax=1.)
  ax.set_title(title, fontsize=9)
  ax.axis('off')


def _grid_figure(panels: int, columns: int, panel_inches: float = 2.2) -> tuple[Figure, list]:
  rows = -(-panels // columns)
  figure = Figure(figsize=(columns * panel_inches, rows * panel_inches + 0.4), dpi=100)
  axes = figure.subplots(rows, columns, squeeze=False).ravel().tolist()
  for ax in axes[panels:]:
    ax.axis('off')
  return figure, axes[:panels]


def _save(figure: Figure, path: str) -> str:
  """Writes `figure` as a PNG to `path` (local or a storage URL), atomically."""
  with paths.open_write(path, 'wb') as f:
    figure.savefig(f, format='png', bbox_inches='tight')
  return path


def plot_attention(image: np.ndarray, maps: np.ndarray, path: str, title: str = '') -> str:
  """The photo, then one overlay per head. `maps`: (heads, h, w)."""
  figure, axes = _grid_figure(len(maps) + 1, columns=min(len(maps) + 1, 7))
  axes[0].imshow(image)
  axes[0].set_title('input', fontsize=9)
  axes[0].axis('off')
  for head, (ax, heat) in enumerate(zip(axes[1:], maps)):
    _overlay(ax, image, heat, f'head {head}')
  figure.suptitle(title)
  return _save(figure, path)


def plot_rollout(image: np.ndarray, rollout_map: np.ndarray, path: str, title: str = '') -> str:
  """The photo, the rollout map on the token grid, and the map laid over the photo."""
  figure, (ax_image, ax_map, ax_overlay) = _grid_figure(3, columns=3, panel_inches=3.)
  ax_image.imshow(image)
  ax_image.set_title('input', fontsize=9)
  ax_image.axis('off')
  shown = ax_map.imshow(rollout_map, cmap='inferno')
  ax_map.set_title('rollout (token grid)', fontsize=9)
  ax_map.axis('off')
  figure.colorbar(shown, ax=ax_map, fraction=0.046)
  _overlay(ax_overlay, image, rollout_map, 'rollout on the image')
  figure.suptitle(title)
  return _save(figure, path)


def similarity_mosaic(similarity: np.ndarray) -> np.ndarray:
  """(h, w, h, w) similarities -> one (h*(h+1)-1, w*(w+1)-1) image, NaN gaps between tiles."""
  h, w = similarity.shape[:2]
  mosaic = np.full((h * (h + 1) - 1, w * (w + 1) - 1), np.nan)
  for i in range(h):
    for j in range(w):
      mosaic[i * (h + 1):i * (h + 1) + h, j * (w + 1):j * (w + 1) + w] = similarity[i, j]
  return mosaic


def plot_posemb_similarity(similarity: np.ndarray, path: str, title: str = '') -> str:
  """Tile (i, j) shows how similar position (i, j)'s embedding is to every position's."""
  h, w = similarity.shape[:2]
  figure = Figure(figsize=(7, 6.4 * h / w + 0.4), dpi=120)
  ax = figure.subplots()
  cmap = matplotlib.colormaps['viridis'].with_extremes(bad='white')
  shown = ax.imshow(similarity_mosaic(similarity), cmap=cmap, vmin=-1., vmax=1.,
                    interpolation='nearest')
  ax.set_xticks([j * (w + 1) + (w - 1) / 2 for j in range(w)], range(1, w + 1), fontsize=6)
  ax.set_yticks([i * (h + 1) + (h - 1) / 2 for i in range(h)], range(1, h + 1), fontsize=6)
  ax.set_xlabel('input patch column')
  ax.set_ylabel('input patch row')
  figure.colorbar(shown, ax=ax, fraction=0.046, label='cosine similarity')
  ax.set_title(title or 'Position embedding similarity')
  return _save(figure, path)


def plot_filters(components: np.ndarray, explained: np.ndarray, path: str,
                 title: str = '') -> str:
  """Each (ph, pw, 3) component min-max scaled to [0, 1] and shown as an RGB patch."""
  figure, axes = _grid_figure(len(components), columns=min(len(components), 7),
                              panel_inches=1.1)
  for k, (ax, component) in enumerate(zip(axes, components)):
    low, high = component.min(), component.max()
    ax.imshow((component - low) / max(high - low, 1e-12), interpolation='nearest')
    ax.set_title(f'{k + 1}: {100 * explained[k]:.1f}%', fontsize=7)
    ax.axis('off')
  figure.suptitle(title or 'Principal components of the patch-embedding filters', fontsize=10)
  return _save(figure, path)


# ---------------------------------------------------------------------------------------------
# Training curves.


def _records(path: str):
  """Yields the payloads of a TFRecord file (an event file), stopping at a truncated tail.

  Each record is: uint64 length, uint32 CRC of the length, payload, uint32 CRC of the payload.
  Reading it here keeps TensorFlow out of this tool (TensorBoard's loaders import it when
  installed). A run that is still writing may leave a partial last record; it is skipped.
  """
  with paths.open_read(path, 'rb') as f:
    while True:
      header = f.read(12)
      if len(header) < 12:
        return
      (length,) = struct.unpack('<Q', header[:8])
      payload = f.read(length)
      if len(payload) < length or len(f.read(4)) < 4:
        return
      yield payload


def read_scalars(workdir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """All scalar summaries under `workdir` (recursively): {tag: (steps, values)}, by step.

  Accepts both TF2 summaries (scalars stored as rank-0 tensors, what clu's writers emit) and TF1
  `simple_value` summaries. Tags from subfolders (e.g. a separate eval writer) are prefixed with
  the folder, unless the tag already is unique.

  Raises:
    FileNotFoundError: no event files under `workdir`.
  """
  # Imported here: the protobufs are needed only by this subcommand.
  from tensorboard.compat.proto import event_pb2  # pylint: disable=g-import-not-at-top
  from tensorboard.util import tensor_util  # pylint: disable=g-import-not-at-top

  root = paths.absolute(workdir).rstrip('/')
  files = paths.glob(paths.join(root, '**', 'events.out.tfevents.*'))
  if not files:
    raise FileNotFoundError(f'No TensorBoard event files under {workdir}')
  points: dict[str, dict[int, float]] = collections.defaultdict(dict)
  for path in files:
    folder = posixpath.relpath(paths.parent(path), root)
    for payload in _records(path):
      event = event_pb2.Event.FromString(payload)
      for value in event.summary.value:
        kind = value.WhichOneof('value')
        if kind == 'simple_value':
          number = float(value.simple_value)
        elif kind == 'tensor' and not value.tensor.tensor_shape.dim:
          array = tensor_util.make_ndarray(value.tensor)
          if array.dtype.kind not in 'fiub':
            continue  # Text and other non-numeric summaries.
          number = float(array)
        else:
          continue  # Images, histograms, non-scalar tensors.
        tag = value.tag if folder == '.' else f'{folder}/{value.tag}'
        points[tag][int(event.step)] = number  # A later write of the same step wins.
  return {tag: (np.array(sorted(by_step)), np.array([by_step[s] for s in sorted(by_step)]))
          for tag, by_step in sorted(points.items())}


def _panel_of(tag: str) -> str:
  name = tag.lower()
  if 'loss' in name:
    return 'loss'
  if 'acc' in name or 'prec@' in name or name.endswith('shot'):  # fewshot/5shot
    return 'accuracy'
  if 'learning_rate' in name or name in ('lr', 'train_lr') or name.endswith('/lr'):
    return 'learning rate'
  return 'other'


def plot_curves(scalars: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str,
                title: str = '') -> str:
  """One figure: loss, accuracy and learning-rate panels (plus 'other' for remaining tags)."""
  if not scalars:
    raise ValueError('No scalar summaries to plot')
  panels: dict[str, list[str]] = collections.defaultdict(list)
  for tag in scalars:
    panels[_panel_of(tag)].append(tag)
  order = [p for p in ('loss', 'accuracy', 'learning rate', 'other') if p in panels]
  figure = Figure(figsize=(4.5 * len(order), 3.6), dpi=100)
  axes = figure.subplots(1, len(order), squeeze=False)[0]
  for ax, panel in zip(axes, order):
    for tag in panels[panel]:
      steps, values = scalars[tag]
      ax.plot(steps, values, marker='.' if len(steps) < 30 else None, label=tag)
    if panel == 'loss' and all(np.all(scalars[t][1] > 0) for t in panels[panel]):
      ax.set_yscale('log')
    ax.set_title(panel)
    ax.set_xlabel('step')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  figure.suptitle(title)
  figure.tight_layout()
  return _save(figure, path)


# ---------------------------------------------------------------------------------------------
# Commands.


def _load(sow_weights: bool = False) -> loader.LoadedModel:
  """The checkpoint's ViT (plain or hybrid); other families have no global attention."""
  overrides = {'sow_weights': True} if sow_weights else {}
  loaded = loader.load(FLAGS.checkpoint, FLAGS.model, image_size=FLAGS.image_size,
                       normalization=FLAGS.normalization, **overrides)
  if not models.by_name(loaded.family).global_attention:
    raise ValueError(f'{FLAGS.model or FLAGS.checkpoint} is a {loaded.family} model: these '
                     'figures need a plain or hybrid ViT (Swin attends within shifted windows, '
                     'the ResNets have no attention)')
  return loaded


def _token_layout(loaded: loader.LoadedModel) -> tuple[int, tuple[int, int]]:
  """(number of prefix tokens, (h, w) patch grid) of a loaded ViT."""
  model = loaded.model
  fields = {'patches': model.patches, 'resnet': model.resnet, 'classifier': model.classifier,
            'distilled': getattr(model, 'distilled', False)}
  stride = architecture.feature_stride(fields)
  grid = (loaded.image_size[0] // stride, loaded.image_size[1] // stride)
  return architecture.num_prefix_tokens(fields), grid


def attention_command(output: str, layer: int = -1, rollout: bool = False) -> str:
  if not FLAGS.image:
    raise app.UsageError('--image is required')
  loaded = _load(sow_weights=True)
  inputs, pixels = image_io.load_batch([classify.read_image(FLAGS.image)], loaded.image_size,
                                       loaded.normalization)
  _, weights = interpret.attention_weights(loaded.model, loaded.params, inputs)
  prefix, grid = _token_layout(loaded)
  name = posixpath.basename(FLAGS.image)
  if rollout:
    heat = interpret.maps_from_attention(interpret.attention_rollout(weights)[0], prefix, grid)
    return plot_rollout(pixels[0], heat, output,
                        f'{name}: attention rollout over {len(weights)} layers')
  if not -len(weights) <= layer < len(weights):
    raise app.UsageError(f'--layer={layer}, but the model has {len(weights)} layers')
  heat = interpret.maps_from_attention(weights[layer][0], prefix, grid)
  who = '[CLS]' if prefix else 'mean token'
  return plot_attention(pixels[0], heat, output,
                        f'{name}: {who} attention, layer {layer % len(weights) + 1} of '
                        f'{len(weights)}')


def posemb_command(output: str) -> str:
  loaded = _load()
  flat = checkpoint.unstack_encoder(checkpoint.flatten(loaded.params))
  key = 'Transformer/posembed_input/pos_embedding'
  if key not in flat:
    raise ValueError('The checkpoint has no learned position embedding (sincos2d models use a '
                     'fixed one)')
  prefix, grid = _token_layout(loaded)
  similarity = interpret.posemb_similarity(flat[key], prefix, grid)
  return plot_posemb_similarity(similarity, output,
                                f'Position embedding similarity ({grid[0]}x{grid[1]} patches)')


def filters_command(output: str, count: int) -> str:
  loaded = _load()
  kernel = np.asarray(loaded.params['embedding']['kernel'])
  if kernel.shape[2] != 3:
    raise ValueError(f'The patch embedding acts on {kernel.shape[2]} channels (a hybrid\'s '
                     'ResNet features), not on RGB pixels: its filters are not images')
  components, explained = interpret.embedding_components(kernel, count)
  return plot_filters(components, explained, output)


def curves_command(output: str) -> str:
  if not FLAGS.workdir:
    raise app.UsageError('--workdir is required')
  return plot_curves(read_scalars(FLAGS.workdir), output,
                     posixpath.basename(FLAGS.workdir.rstrip('/')))


def define_flags() -> None:
  """The command's flags; defined only when run as a program, so the library imports cleanly."""
  flags.DEFINE_string('checkpoint', None, 'Model file: .npz (any layout), timm '
                      '.safetensors/.pth, or an HF folder; local, gs://..., or a Hub name '
                      '(hf://ORG/REPO[/FILE], hf-hub:ORG/REPO).')
  flags.DEFINE_string('model', None, 'Zoo model name (optional for ViT and hybrids).')
  flags.DEFINE_string('image', None, 'Image file (attention, rollout).')
  flags.DEFINE_integer('image_size', None,
                       'Input resolution; default: the one the checkpoint was trained at.')
  flags.DEFINE_enum('normalization', None, list(image_io.NORMALIZATIONS),
                    'Pixel scaling; default: the model card beside the checkpoint, else the '
                    'family default (see classify).')
  flags.DEFINE_integer('layer', -1, 'Encoder layer for `attention` (negative: from the end).')
  flags.DEFINE_integer('components', 28, 'Principal components for `filters`.')
  flags.DEFINE_string('workdir', None, 'Training workdir with event files (curves).')
  flags.DEFINE_string('output', None, 'PNG file to write.')


def main(argv: Sequence[str]) -> None:
  if len(argv) != 2 or argv[1] not in SUBCOMMANDS:
    raise app.UsageError(f'Usage: python -m vit_jax.tools.visualize {{{",".join(SUBCOMMANDS)}}} '
                         '--output=FILE.png [flags]')
  command = argv[1]
  if not FLAGS.output:
    raise app.UsageError('--output is required')
  if command != 'curves' and not FLAGS.checkpoint:
    raise app.UsageError('--checkpoint is required')
  try:
    if command in ('attention', 'rollout'):
      path = attention_command(FLAGS.output, FLAGS.layer, rollout=command == 'rollout')
    elif command == 'posemb':
      path = posemb_command(FLAGS.output)
    elif command == 'filters':
      path = filters_command(FLAGS.output, FLAGS.components)
    else:
      path = curves_command(FLAGS.output)
  except (FileNotFoundError, KeyError, ValueError, image_io.ImageError,
          paths.MissingClientError) as e:
    # CheckpointError and ImageError are ValueErrors: report them without a traceback.
    sys.exit(f'visualize {command}: {e}')
  print(f'Wrote {path}')


if __name__ == '__main__':
  define_flags()
  app.run(main)
