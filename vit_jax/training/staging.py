"""The train log and TensorBoard events of a job, on a local or an object-store workdir.

Both are written by libraries that want a local file: Python's `logging.FileHandler`, and clu's
TensorBoard writer, which goes through `tf.io.gfile`. On a pod `tf.io.gfile` serves `gs://`, but
nothing can point it at a test server, and the job's other files go through
`checkpoint.paths`. So for a workdir on object storage both are written to a local staging
folder, and `Staging.sync` copies each file that changed to the workdir through `paths` (each
upload one whole object: a reader sees the file as of a sync, never a half-written one). The
loop syncs after each log step at most every `interval_s` seconds, at each checkpoint, on a
preemption and at the end (also when the job fails). A local workdir is written directly.

A restarted job writes a new event file (its name holds the time and process id) beside the old
ones, which TensorBoard reads together; its log file starts over, as it does locally.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

from absl import logging

from vit_jax.checkpoint import paths


class Staging:
  """Where the job's log and events go (`folder`), and their copy to `workdir`; see the module
  docstring. A context manager: the last sync runs and the staging folder is removed on exit."""

  def __init__(self, workdir: str, interval_s: float = 60.):
    self.workdir = workdir
    self.remote = paths.is_remote(workdir)
    self.interval_s = interval_s
    # Local scratch for a remote workdir: never a user's path.
    self.folder = tempfile.mkdtemp(prefix='vit_jax-staging-') if self.remote else workdir
    self._synced: dict[str, tuple[int, int]] = {}  # relative path -> (size, mtime) uploaded
    self._last = time.monotonic()

  def __enter__(self) -> Staging:
    return self

  def __exit__(self, *exc_info) -> None:
    try:
      self.sync(force=True)
    finally:
      if self.remote:
        shutil.rmtree(self.folder, ignore_errors=True)

  def sync(self, force: bool = False) -> None:
    """Copies every new or changed staged file to the workdir (if `force` or `interval_s` has
    passed since the last sync)."""
    if not self.remote or (not force and time.monotonic() - self._last < self.interval_s):
      return
    self._last = time.monotonic()
    for folder, _, names in os.walk(self.folder):
      for name in names:
        local = os.path.join(folder, name)
        relative = os.path.relpath(local, self.folder)
        stat = os.stat(local)
        if self._synced.get(relative) == (stat.st_size, stat.st_mtime_ns):
          continue
        target = paths.join(self.workdir, *relative.split(os.sep))
        try:
          with paths.atomic_local_path(target) as tmp:
            shutil.copyfile(local, tmp)
        except OSError as e:  # The job goes on; the next sync tries again.
          logging.warning('Could not copy %s to %s: %s', relative, target, e)
          continue
        self._synced[relative] = (stat.st_size, stat.st_mtime_ns)
