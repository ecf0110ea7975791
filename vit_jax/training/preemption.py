"""Preemption: a SIGTERM becomes a checkpoint of a step every host reached, then a clean stop.

Preemptible and spot VMs, TPU maintenance and SLURM send SIGTERM some seconds before they stop
a job. The training loop asks `Preemption.reached(step)` after every step; where it answers
True, every host saves the checkpoint of that same step, waits for it to commit, and the job
stops with `Preempted` (`vit_jax.main` exits with `EXIT_CODE`). A restart on the same workdir
resumes from that step, bit for bit.

Agreeing on the step: with `jax.distributed` (several processes), JAX's preemption service
catches the SIGTERM (its notifier installs the handler at `jax.distributed.initialize`, and on
TPUs also takes the platform's own maintenance notice), tells every host, and agrees on the step
after the largest step any host had reached (`multihost_utils.reached_preemption_sync_point`,
which the loop must call at every step; each call reads a local flag, no collective). This is
what Orbax's `CheckpointManager.reached_preemption` and MaxText use. In a single process a
SIGTERM handler of our own sets the flag.

A second SIGTERM while the checkpoint is being written stops the process at once (the default
action is restored when the save begins): Orbax writes a step to a temporary folder (locally)
or marks it complete with `commit_success.txt` (on object stores) only once every host has
written it, so the unfinished step is never restored and the previous checkpoint stays intact.
"""

from __future__ import annotations

import signal
import threading
import types

from absl import logging
import jax
from jax.experimental import multihost_utils

# EX_TEMPFAIL (sysexits.h): "a temporary failure; the user is invited to retry". Not 0, so that a
# scheduler that restarts failed jobs (Kubernetes, SLURM --requeue) restarts this one.
EXIT_CODE = 75


class Preempted(Exception):
  """The job saved the checkpoint of `step` in `workdir` on a preemption notice and stopped."""

  def __init__(self, step: int, workdir: str):
    super().__init__(f'Preempted: saved the checkpoint of step {step} in {workdir}; run the same '
                     'command again to resume from it')
    self.step = step
    self.workdir = workdir


def _jax_service() -> bool:
  """Whether JAX's preemption service runs in this process (jax.distributed with it enabled)."""
  return jax.distributed.is_initialized() and jax.config.jax_enable_preemption_service


class Preemption:
  """Tells the training loop at which step to save and stop; see the module docstring.

  Use as a context manager around the loop: it installs the single-process SIGTERM handler and
  restores the previous one on exit.
  """

  def __init__(self):
    self._notice = threading.Event()
    self._previous = None
    self._service = _jax_service()

  def __enter__(self) -> Preemption:
    if self._service:
      return self
    if jax.process_count() > 1:
      logging.warning('JAX\'s preemption service is off (jax_enable_preemption_service): a '
                      'SIGTERM stops this host without a checkpoint')
    elif threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
    else:
      logging.warning('The job runs outside the main thread: a SIGTERM is not caught')
    return self

  def __exit__(self, *exc_info) -> None:
    if self._previous is not None:  # None also where the handler was not Python's (JAX's).
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def _on_sigterm(self, signum: int, frame: types.FrameType | None) -> None:
    del signum, frame
    logging.warning('SIGTERM: saving a checkpoint after the current step, then stopping')
    self._notice.set()

  def reached(self, step: int) -> bool:
    """Whether every host is to save the checkpoint of `step` and stop; call at every step."""
    if self._service:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._notice.is_set()

  def saving(self, step: int) -> None:
    """The checkpoint of `step` is being written: from now on a SIGTERM stops at once."""
    if threading.current_thread() is threading.main_thread():
      signal.signal(signal.SIGTERM, signal.SIG_DFL)
    logging.warning('Preemption: saving the checkpoint of step %d; a second SIGTERM stops at '
                    'once and leaves the previous checkpoint in place', step)
