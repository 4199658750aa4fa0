"""Stop requests: SIGTERM (what schedulers send before preemption) or Ctrl-C asks the loop to
stop.

The loop asks `should_stop(step)` after every step; when it says yes, the loop saves a
checkpoint at that step and returns, so the process exits 0 and the same command resumes.

One process: a Python SIGTERM handler sets a flag. Several processes: they must all stop at the
same step, or some would wait forever in a collective (the save) that the others never join,
and a signal reaches each process at a different time (or only one of them: a TPU host under
maintenance). JAX's preemption service does the agreeing: once any process has caught SIGTERM,
all of them reach the same "sync point" step. It owns SIGTERM then, so no Python handler is
installed.

Ctrl-C (SIGINT) does what SIGTERM does: in a multi-process run it sends this process a SIGTERM,
so that the preemption service tells the others. A second Ctrl-C while the step is saved exits
at once (code 130): Orbax writes a checkpoint into a temporary folder and renames it when
complete, so the newest complete checkpoint is untouched and the same command resumes from it.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable

import jax
from jax.experimental import multihost_utils

_stop = threading.Event()
_interrupted = threading.Event()  # a first Ctrl-C arrived
_hard_exit: list[Callable[[], None]] = []  # what a second Ctrl-C still does before exiting
INTERRUPT_EXIT_CODE = 130  # 128 + SIGINT, as shells report an interrupted command


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


def install_stop_handlers() -> Callable[[], None]:
    """Routes SIGTERM and Ctrl-C to a stop request (main thread only, as Python requires);
    returns a function that puts Ctrl-C's previous handler back (the loop calls it when its
    steps end, so that Ctrl-C during a final evaluation interrupts as usual).

    In a distributed run SIGTERM is left to JAX's preemption service, which caught it first:
    replacing its handler would leave the processes unable to agree on a step.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    _interrupted.clear()
    if not _coordinated():
        signal.signal(signal.SIGTERM, request_stop)
    previous = signal.signal(signal.SIGINT, _on_ctrl_c)
    return lambda: signal.signal(signal.SIGINT, previous)


def _on_ctrl_c(*_args) -> None:
    if _interrupted.is_set():
        _say(
            "Second Ctrl-C: exiting now, without waiting for the save. The newest complete "
            "checkpoint is kept; the same command resumes from it."
        )
        for release in list(_hard_exit):
            release()
        os._exit(INTERRUPT_EXIT_CODE)
    _interrupted.set()
    _say("Ctrl-C: saving the current step, then exiting (Ctrl-C again to exit at once).")
    if _coordinated():
        os.kill(os.getpid(), signal.SIGTERM)  # the preemption service tells the other processes
    else:
        request_stop()


def _say(line: str) -> None:
    # One write to the file descriptor: a handler may run in the middle of a print.
    os.write(sys.stderr.fileno(), f"{line}\n".encode())


def at_hard_exit(release: Callable[[], None]) -> None:
    """Runs `release` (e.g. removing a lock file) if a second Ctrl-C exits the process."""
    _hard_exit.append(release)


def forget_at_hard_exit(release: Callable[[], None]) -> None:
    if release in _hard_exit:
        _hard_exit.remove(release)


def should_stop(step: int) -> bool:
    """Whether to save and stop after `step`: the same answer on every process.

    Must be called after every step, from the first step of the run on (the preemption service
    counts on it to pick a step that no process has passed yet).
    """
    if _coordinated():
        return multihost_utils.reached_preemption_sync_point(step)
    return stop_requested()
