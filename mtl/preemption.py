"""Stop requests: SIGTERM (what schedulers send before preemption) asks the loop to stop.

The handler only sets a flag; the train loop checks it between steps, saves a checkpoint at
the current step and returns, so the process exits 0 and the same command resumes.
"""

from __future__ import annotations

import signal
import threading

_stop = threading.Event()


def request_stop(*_args) -> None:
    """Asks the running loop to save and stop after the current step."""
    _stop.set()


def stop_requested() -> bool:
    return _stop.is_set()


def reset() -> None:
    _stop.clear()


def install_sigterm_handler() -> None:
    """Routes SIGTERM to `request_stop` (main thread only, as Python requires)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, request_stop)
