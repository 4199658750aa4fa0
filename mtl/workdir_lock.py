"""One run per workdir: a lock file that a run takes before writing anything and keeps fresh.

Two runs on one workdir (a job requeued while the old one still runs, one command pasted in
two terminals) would interleave their checkpoints and metrics into a record of neither. So a
run takes `<workdir>/run.lock` first (process 0 on behalf of all processes of a multi-host
run), rewrites its heartbeat every `HEARTBEAT_SECONDS` while it runs, and removes it on every
way out (including a second Ctrl-C). A second run on a held workdir stops at once with
`WorkdirBusyError`, naming the holder. A lock whose run died without removing it (SIGKILL, a
lost host) is taken over with a warning: on the same host when its process is gone, from
anywhere once its heartbeat is older than `STALE_SECONDS`.

    with workdir_lock.hold(workdir):
        ...  # train, evaluate, write results

Local and network file systems take the lock with an exclusive create (`O_EXCL`, atomic on
NFS too). Object stores (`gs://...`) have no exclusive create here: the lock is written, read
back and kept only if it is still ours, which leaves a window of a second or so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator

import jax
import numpy as np
from absl import logging
from etils import epath

from mtl import preemption
from mtl.errors import WorkdirBusyError

LOCK_FILE = "run.lock"
HEARTBEAT_SECONDS = 20.0
STALE_SECONDS = 300.0  # 15 missed heartbeats: a stalled file system, not a live run


@dataclasses.dataclass(frozen=True)
class Holder:
    """Who holds a lock, as recorded in the lock file."""

    host: str
    pid: int
    started: float  # time.time() when it took the lock
    heartbeat: float  # time.time() of its last refresh
    token: str  # unique per acquisition
    processes: int = 1

    def describe(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.started))
        run = f" (process 0 of {self.processes})" if self.processes > 1 else ""
        return (
            f"process {self.pid} on {self.host}{run}, running since {since}, last heartbeat "
            f"{max(0.0, now - self.heartbeat):.0f} s ago"
        )


def read_holder(path: epath.PathLike) -> Holder | None:
    """The lock file's holder; None if there is no lock file, or it cannot be parsed (a lock
    cut off while written is no claim on the workdir)."""
    try:
        record = json.loads(epath.Path(path).read_text())
        return Holder(**record)
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, TypeError, ValueError):
        return Holder(host="?", pid=-1, started=0.0, heartbeat=0.0, token="damaged")


def stale_reason(holder: Holder, now: float | None = None) -> str | None:
    """Why `holder` no longer runs (its process is gone, its heartbeat is old), or None."""
    now = time.time() if now is None else now
    if holder.token == "damaged":
        return "the lock file is damaged"
    if holder.host == socket.gethostname() and not _process_alive(holder.pid):
        return f"its process {holder.pid} is gone"
    if now - holder.heartbeat > STALE_SECONDS:
        return f"its last heartbeat was {now - holder.heartbeat:.0f} s ago"
    return None


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


class _Held:
    """A lock this process holds: its file, its record and the heartbeat thread."""

    def __init__(self, path: epath.Path, holder: Holder, created_workdir: bool):
        self.path, self.holder, self.created_workdir = path, holder, created_workdir
        self.depth = 1
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="workdir-lock", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            current = read_holder(self.path)
            if current is None or current.token != self.holder.token:
                logging.error(
                    "The lock on %s is no longer this run's (%s): another run took it over "
                    "while this one was stalled. Stop one of them.",
                    self.path.parent,
                    current.describe() if current else "the lock file is gone",
                )
                return
            self.holder = dataclasses.replace(self.holder, heartbeat=time.time())
            _write(self.path, self.holder)

    def release(self) -> None:
        """Stops the heartbeat and removes the lock file if it is still ours."""
        self._stop.set()
        current = read_holder(self.path)
        if current is not None and current.token == self.holder.token:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        workdir = self.path.parent
        if self.created_workdir and not any(workdir.iterdir()):
            with contextlib.suppress(OSError):  # a run failing before writing leaves no folder
                workdir.rmdir()


_depth: dict[str, int] = {}  # lock path -> nested holds in this process (every process)
_locks: dict[str, _Held] = {}  # lock path -> the lock file process 0 holds
_guard = threading.Lock()


@contextlib.contextmanager
def hold(workdir: str) -> Iterator[None]:
    """Holds `workdir`'s lock for the block: process 0 takes it, every process learns the
    outcome (all raise `WorkdirBusyError` if it is held). Re-entrant within a process, so a
    launcher and the run loop inside it can both ask."""
    path = epath.Path(workdir) / LOCK_FILE
    key = os.fspath(path) if "://" in os.fspath(path) else os.path.abspath(path)
    with _guard:
        depth = _depth.get(key, 0)
        _depth[key] = depth + 1
    if depth == 0:
        try:
            lock = _acquire_everywhere(path)
        except BaseException:
            with _guard:
                del _depth[key]
            raise
        if lock is not None:
            _locks[key] = lock
            preemption.at_hard_exit(lock.release)
    try:
        yield
    finally:
        with _guard:
            _depth[key] -= 1
            lock = _locks.pop(key, None) if _depth[key] == 0 else None
            if _depth[key] == 0:
                del _depth[key]
        if lock is not None:
            preemption.forget_at_hard_exit(lock.release)
            lock.release()


def _acquire_everywhere(path: epath.Path) -> _Held | None:
    """Process 0 takes the lock (and returns it); the others wait for its answer (a
    collective), so that every process of a refused run stops, not only process 0."""
    lock, error = None, None
    if jax.process_index() == 0:
        try:
            lock = _acquire(path)
        except WorkdirBusyError as e:
            error = e
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        refused = multihost_utils.broadcast_one_to_all(np.int32(error is not None))
        if int(refused) and error is None:
            holder = read_holder(path)
            where = holder.describe() if holder else "see process 0's log"
            error = WorkdirBusyError(f"{path.parent} is in use by another run ({where}).")
    if error is not None:
        raise error
    return lock


def _acquire(path: epath.Path) -> _Held:
    workdir = path.parent
    created = not workdir.exists()
    workdir.mkdir(parents=True, exist_ok=True)
    now = time.time()
    ours = Holder(
        host=socket.gethostname(),
        pid=os.getpid(),
        started=now,
        heartbeat=now,
        token=uuid.uuid4().hex,
        processes=jax.process_count(),
    )
    for _ in range(5):  # each pass either takes the lock or clears a stale one
        if _create_exclusive(path, ours):
            return _Held(path, ours, created)
        holder = read_holder(path)
        if holder is None:
            continue  # released in between
        reason = stale_reason(holder)
        if reason is None:
            raise busy(workdir, holder)
        logging.warning(
            "Taking over the lock on %s from a run that no longer runs (%s: %s).",
            workdir,
            holder.describe(),
            reason,
        )
        _clear_stale(path, holder)
    raise busy(workdir, read_holder(path) or ours)


def busy(workdir: epath.Path, holder: Holder) -> WorkdirBusyError:
    return WorkdirBusyError(
        f"{workdir} is in use by another run: {holder.describe()}. Wait for it to finish, stop "
        f"it (kill -TERM {holder.pid} on {holder.host}: it saves and exits), or use another "
        f"--workdir. A lock left by a run that died is taken over by itself once its process "
        f"is gone or its heartbeat is {STALE_SECONDS:.0f} s old. Nothing was changed."
    )


def _create_exclusive(path: epath.Path, holder: Holder) -> bool:
    """Writes the lock file unless one exists; whether it did."""
    text = json.dumps(dataclasses.asdict(holder))
    if "://" in os.fspath(path):  # object store: write, read back, keep it only if ours
        if path.exists():
            return False
        path.write_text(text)
        time.sleep(1.0)  # let a racing writer's object land first
        current = read_holder(path)
        return current is not None and current.token == holder.token
    try:
        descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except OSError as e:
        if e.errno == errno.EEXIST:
            return False
        raise
    with os.fdopen(descriptor, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    return True


def _write(path: epath.Path, holder: Holder) -> None:
    """Rewrites a held lock whole (temporary file renamed over it): never half a record."""
    temporary = path.parent / f".{LOCK_FILE}.{holder.token[:8]}.tmp"
    temporary.write_text(json.dumps(dataclasses.asdict(holder)))
    temporary.replace(path)


def _clear_stale(path: epath.Path, holder: Holder) -> None:
    """Removes a stale lock, unless another run replaced it meanwhile (then it stays)."""
    if "://" in os.fspath(path):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    aside = path.parent / f".{LOCK_FILE}.stale.{uuid.uuid4().hex[:8]}"
    try:
        os.rename(path, aside)  # one of several racing takers gets it
    except FileNotFoundError:
        return
    moved = read_holder(aside)
    if moved is not None and moved.token != holder.token:  # a fresh lock: put it back
        with contextlib.suppress(OSError):
            os.link(aside, path)  # fails if yet another run holds it now
    aside.unlink()
