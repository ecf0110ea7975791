"""The train log and TensorBoard events of a job, on a local or an object-store workdir.

Both are written by libraries that want a local file: Python's `logging.FileHandler`, and clu's
TensorBoard writer, which goes through `tf.io.gfile`. On a pod `tf.io.gfile` serves `gs://`, but
nothing can point it at a test server, and the job's other files go through
`checkpoint.paths`. So for a workdir on object storage both are written to a local staging
folder, and each file that changed is copied to the workdir through `paths` (each upload one
whole object: a reader sees the file as of a copy, never a half-written one): by a background
thread, so that the training loop never waits on the network, every `interval_s` seconds and
when the loop asks (`request`, at each checkpoint), and once more when the job ends, whether it
finished, failed or was preempted. A process killed outright (SIGKILL) loses what it wrote
since the last copy. A local workdir is written directly.

A restarted job writes a new event file (its name holds the time and process id) beside the old
ones, which TensorBoard reads together; its log file starts over, as it does locally.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading

from absl import logging

from vit_jax.checkpoint import paths


class Staging:
  """Where the job's log and events go (`folder`), and their copy to `workdir`; see the module
  docstring. A context manager: copies run while it is open, the last one on exit, and the
  staging folder is removed then."""

  def __init__(self, workdir: str, interval_s: float = 30.):
    self.workdir = workdir
    self.remote = paths.is_remote(workdir)
    self.interval_s = interval_s
    # Local scratch for a remote workdir: never a user's path.
    self.folder = tempfile.mkdtemp(prefix='vit_jax-staging-') if self.remote else workdir
    self._copied: dict[str, tuple[int, int]] = {}  # relative path -> (size, mtime) copied
    self._lock = threading.Lock()
    self._wake = threading.Event()  # `request`, or the end.
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, name='vit_jax-staging', daemon=True)

  def __enter__(self) -> Staging:
    if self.remote:
      self._thread.start()
    return self

  def __exit__(self, *exc_info) -> None:
    if not self.remote:
      return
    self._stop.set()
    self._wake.set()
    self._thread.join()
    try:
      self.sync()
    finally:
      shutil.rmtree(self.folder, ignore_errors=True)

  def _run(self) -> None:
    while True:
      self._wake.wait(self.interval_s)
      self._wake.clear()
      if self._stop.is_set():
        return
      self.sync()

  def request(self) -> None:
    """Asks the background thread for a copy now; returns at once."""
    self._wake.set()

  def sync(self) -> None:
    """Copies every new or changed staged file to the workdir (no-op for a local workdir).

    A file that cannot be copied is logged and tried again at the next copy: the job goes on.
    """
    if not self.remote:
      return
    with self._lock:
      for folder, _, names in os.walk(self.folder):
        for name in names:
          local = os.path.join(folder, name)
          relative = os.path.relpath(local, self.folder)
          stat = os.stat(local)
          if self._copied.get(relative) == (stat.st_size, stat.st_mtime_ns):
            continue
          target = paths.join(self.workdir, *relative.split(os.sep))
          try:
            with paths.atomic_local_path(target) as tmp:
              shutil.copyfile(local, tmp)
          except Exception as e:  # pylint: disable=broad-except  # Each client has its own.
            logging.warning('Could not copy %s to %s: %s', relative, target, e)
            continue
          self._copied[relative] = (stat.st_size, stat.st_mtime_ns)
