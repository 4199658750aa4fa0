"""Progress lines, metrics.jsonl and TensorBoard event files for a run."""

from __future__ import annotations

import json
import logging as logging_std
import os
import time
from collections.abc import Mapping

import jax
from absl import logging
from etils import epath


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


class MetricsWriter:
    """Writes scalars to `workdir/metrics.jsonl` and TensorBoard events (process 0 only).

    The event files are written by TensorBoard's own writer, without TensorFlow (the run
    paths never import it). A bucket workdir (gs://...) needs `gcsfs` (fsspec) for them.
    """

    def __init__(self, workdir: str):
        self.active = jax.process_index() == 0
        if not self.active:
            return
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        path = epath.Path(workdir)
        path.mkdir(parents=True, exist_ok=True)
        self._jsonl = (path / "metrics.jsonl").open("a")
        self._events = EventFileWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self.active:
            return
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary

        record = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        values = [Summary.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()]
        self._events.add_event(
            Event(wall_time=time.time(), step=int(step), summary=Summary(value=values))
        )
        self._events.flush()

    def close(self) -> None:
        if self.active:
            self._jsonl.close()
            self._events.close()


class Progress:
    """Formats `step | per-task losses | steps/s | time left` lines."""

    def __init__(self, num_steps: int, first_step: int):
        self.num_steps = num_steps
        self._last_step, self._last_time = first_step, time.perf_counter()

    def rate(self, step: int) -> float:
        """Steps per second since the previous call (resets the window)."""
        now = time.perf_counter()
        rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
        self._last_step, self._last_time = step, now
        return rate

    def line(self, step: int, rate: float, losses: Mapping[str, float]) -> str:
        left = (self.num_steps - step) / rate if rate > 0 else float("inf")
        parts = " ".join(f"{k}={v:.3f}" for k, v in losses.items())
        eta = _duration(left) if left != float("inf") else "?"
        return f"step {step}/{self.num_steps} | loss {parts} | {rate:.2f} steps/s | left {eta}"

    @staticmethod
    def log(line: str) -> None:
        logging.info(line)


class _LibraryInfoFilter(logging_std.Filter):
    """Drops INFO records of chatty libraries (Orbax logs every save in detail)."""

    def filter(self, record: logging_std.LogRecord) -> bool:
        chatty = any(part in record.pathname for part in _CHATTY)
        return record.levelno >= logging_std.WARNING or not chatty


_CHATTY = ("/orbax/", "/tensorflow_datasets/", "/etils/")


def quiet_library_logs() -> None:
    """Keeps library INFO lines out of the run's log; their warnings and errors still show."""
    handler = logging.get_absl_handler()
    if not any(isinstance(f, _LibraryInfoFilter) for f in handler.filters):
        handler.addFilter(_LibraryInfoFilter())
