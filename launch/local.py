"""Runs one command as N processes on this machine, joined into one JAX run.

    python -m launch.local --num_processes=2 -- \
        python -m launch.train --config=configs/omniglot_mtl.py --workdir=/tmp/run

Each process gets `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID` (read
by `mtl/distributed.py`), so the command itself is the same for all. This is how a multi-host
run is tried on one machine (CPU processes talk through gloo), or how a GPU host runs one
process per GPU (`--devices_per_process=1`). Output lines are prefixed with `[i]`; with
`--process_log_dir` each process also writes `process_<i>.log` there.

SIGTERM or Ctrl-C to the launcher is passed to every process as SIGTERM, as SLURM does: they
agree on a step, save it and exit 0; the same command resumes. If a process fails, the others
get `--grace_s` seconds to fail too (they usually do: a collective loses its peer), then are
killed. `--dry_run` prints the commands instead.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence

from absl import app, flags

_NUM = flags.DEFINE_integer("num_processes", 2, "Processes to start.", lower_bound=1)
_HOST = flags.DEFINE_string("host", "127.0.0.1", "Address of the coordinator (process 0).")
_PORT = flags.DEFINE_integer("port", 0, "Coordinator port; 0 picks a free one.")
_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices_per_process", 0, "Fake CPU devices per process (XLA flag); 0 leaves the default."
)
_DEVICES = flags.DEFINE_integer(
    "devices_per_process", 0, "GPUs per process (JAX_LOCAL_DEVICE_IDS); 0: all visible."
)
_LOG_DIR = flags.DEFINE_string("process_log_dir", None, "Also write each process's output here.")
_GRACE = flags.DEFINE_float("grace_s", 60.0, "Seconds the others get after a process fails.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the commands; start nothing.")


def free_port() -> int:
    """A port that was free a moment ago (the coordinator binds it right after)."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def process_envs(
    num_processes: int,
    address: str,
    cpu_devices: int = 0,
    devices_per_process: int = 0,
    xla_flags: str = "",
) -> list[dict[str, str]]:
    """The environment variables each process gets on top of the launcher's own.

    `xla_flags` is the launcher's $XLA_FLAGS; a fake CPU device count replaces the one in it.
    """
    envs = []
    for i in range(num_processes):
        env = {
            "JAX_COORDINATOR_ADDRESS": address,
            "JAX_NUM_PROCESSES": str(num_processes),
            "JAX_PROCESS_ID": str(i),
        }
        if cpu_devices:
            kept = [f for f in xla_flags.split() if "xla_force_host_platform_device_count" not in f]
            count = f"--xla_force_host_platform_device_count={cpu_devices}"
            env["XLA_FLAGS"] = " ".join([*kept, count])
        if devices_per_process:
            first = i * devices_per_process
            ids = range(first, first + devices_per_process)
            env["JAX_LOCAL_DEVICE_IDS"] = ",".join(map(str, ids))
        envs.append(env)
    return envs


def render(env: Mapping[str, str], command: Sequence[str]) -> str:
    """`VAR=value ... command` as one shell line."""
    assignments = [f"{k}={shlex.quote(v)}" for k, v in env.items()]
    return " ".join([*assignments, shlex.join(command)])


def run(command: Sequence[str], envs: Sequence[Mapping[str, str]], log_dir: str | None) -> int:
    """Starts one process per env, relays output and signals; returns the first failure's code."""
    lock = threading.Lock()
    procs = []
    for i, env in enumerate(envs):
        # Own session: a Ctrl-C reaches only the launcher, which turns it into SIGTERM.
        proc = subprocess.Popen(
            command,
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        procs.append(proc)
        print(f"[launch] process {i}: pid {proc.pid}", flush=True)
    relays = [
        threading.Thread(target=_relay, args=(i, p, lock, log_dir), daemon=True)
        for i, p in enumerate(procs)
    ]
    for t in relays:
        t.start()

    def forward(signum, _frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)

    failed_at = None
    while any(p.poll() is None for p in procs):
        if failed_at is None and any(p.poll() not in (None, 0) for p in procs):
            failed_at = time.monotonic()
        if failed_at is not None and time.monotonic() - failed_at > _GRACE.value:
            for p in procs:
                if p.poll() is None:
                    print(f"[launch] killing pid {p.pid}: a peer failed", flush=True)
                    p.kill()
        time.sleep(0.2)
    for t in relays:
        t.join()
    codes = [p.returncode for p in procs]
    print(f"[launch] exit codes: {codes}", flush=True)
    return next((c for c in codes if c != 0), 0)


def _relay(index: int, proc: subprocess.Popen, lock: threading.Lock, log_dir: str | None) -> None:
    log = None
    if log_dir:
        os.makedirs(log_dir, exist_ok=True)
        log = open(os.path.join(log_dir, f"process_{index}.log"), "a")  # noqa: SIM115
    for line in proc.stdout:
        with lock:
            sys.stdout.write(f"[{index}] {line}")
            sys.stdout.flush()
        if log:
            log.write(line)
            log.flush()
    if log:
        log.close()


def main(argv: list[str]) -> None:
    command = argv[1:]
    if not command:
        raise app.UsageError("Give the command after `--`, e.g. -- python -m launch.train ...")
    port = _PORT.value or free_port()
    envs = process_envs(
        _NUM.value,
        f"{_HOST.value}:{port}",
        _CPU_DEVICES.value,
        _DEVICES.value,
        os.environ.get("XLA_FLAGS", ""),
    )
    if _DRY_RUN.value:
        for env in envs:
            print(render(env, command))
        return
    sys.exit(run(command, envs, _LOG_DIR.value))


if __name__ == "__main__":
    app.run(main)
