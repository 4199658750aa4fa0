"""Stop requests: SIGTERM (what schedulers send before preemption) asks the loop to stop.

The loop asks `should_stop(step)` after every step; when it says yes, the loop saves a
checkpoint at that step and returns, so the process exits 0 and the same command resumes.

One process: a Python SIGTERM handler sets a flag. Several processes: they must all stop at the
same step, or some would wait forever in a collective (the save) that the others never join,
and a signal reaches each process at a different time (or only one of them: a TPU host under
maintenance). JAX's preemption service does the agreeing: once any process has caught SIGTERM,
all of them reach the same "sync point" step. It owns SIGTERM then, so no Python handler is
installed.
"""

from __future__ import annotations

import signal
import threading

import jax
from jax.experimental import multihost_utils

_stop = threading.Event()


def request_stop(*_args) -> None:
    """Asks the running loop to save and stop after the current step."""
    _stop.set()


def stop_requested() -> bool:
    return _stop.is_set()


def reset() -> None:
    _stop.clear()


def _coordinated() -> bool:
    """Whether JAX's distributed runtime (and with it the preemption service) is running."""
    return jax.distributed.is_initialized()


def install_sigterm_handler() -> None:
    """Routes SIGTERM to `request_stop` (main thread only, as Python requires).

    Not in a distributed run: JAX's preemption service caught SIGTERM first, and replacing its
    handler would leave the processes unable to agree on a step.
    """
    if _coordinated():
        return
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, request_stop)


def should_stop(step: int) -> bool:
    """Whether to save and stop after `step`: the same answer on every process.

    Must be called after every step, from the first step of the run on (the preemption service
    counts on it to pick a step that no process has passed yet).
    """
    if _coordinated():
        return multihost_utils.reached_preemption_sync_point(step)
    return stop_requested()
