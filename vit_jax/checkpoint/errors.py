"""The errors of reading, converting and fitting checkpoints: one hierarchy.

Every error is a `CheckpointError`, itself a `ValueError`, so callers (the command-line tools)
catch one type. The subclasses say where the problem lies; a family's converters raise them
with messages that name the family.
"""


class CheckpointError(ValueError):
  """A checkpoint that cannot be read, or does not fit the model it is loaded into."""


class StateDictError(CheckpointError):
  """A file that is not a readable (torch or safetensors) state dict, or cannot be written."""


class ConversionError(CheckpointError):
  """Parameters that the target format cannot represent, or a malformed source."""
