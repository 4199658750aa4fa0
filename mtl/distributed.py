"""Multi-process start-up: which processes form one JAX run, decided from flags or the environment.

Every process of a multi-host run calls `initialize` before any other JAX call; afterwards
`jax.devices()` lists the devices of all processes and one `Mesh` spans them. How a process
learns its place, in order of precedence:

- explicit: a coordinator address, process count and process id (flags, or the environment
  variables `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID` that
  `launch/local.py` sets);
- SLURM: inside `srun` with more than one task, JAX reads `SLURM_*` (coordinator: the first node);
- TPU VM: JAX asks the TPU metadata server (every worker of a pod runs the same command);
- otherwise a single process, with no coordinator at all.

`plan` is a pure function of its arguments and the environment, so the decision is tested
without starting anything; `initialize` carries it out.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Mapping
from typing import NamedTuple, TypeVar

import jax
from absl import logging

from mtl.errors import ConfigError, DataError

T = TypeVar("T")

MODES = ("auto", "on", "off")
ENV_ADDRESS, ENV_COUNT, ENV_ID = "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"
_SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID")


class Plan(NamedTuple):
    """How this process starts: `source` says why; `kwargs` go to `jax.distributed.initialize`."""

    source: str  # "single", "explicit", "slurm", "tpu" or "detect" (JAX's own detection)
    kwargs: dict


def on_tpu_vm() -> bool:
    """A Cloud TPU VM exposes its chips as /dev/accel* (v2-v4) or /dev/vfio/<n> (v5 on)."""
    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def plan(
    mode: str = "auto",
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    env: Mapping[str, str] | None = None,
    tpu: bool | None = None,
) -> Plan:
    """Decides how this process joins a run (see the module docstring for the order).

    Args:
      mode: `auto` (explicit values, else SLURM, else TPU, else a single process), `on`
        (always call `jax.distributed.initialize`, letting JAX detect what is not given),
        `off` (a single process, whatever the environment says).
      coordinator_address, num_processes, process_id: explicit values; those left None are
        read from the `JAX_*` environment variables.
      env: the environment (default `os.environ`).
      tpu: whether this is a TPU VM (default: `on_tpu_vm()`).
    """
    env = os.environ if env is None else env
    if mode not in MODES:
        raise ConfigError(f"--distributed must be one of {', '.join(MODES)}, got {mode!r}.")
    if mode == "off":
        return Plan("single", {})
    address = coordinator_address or env.get(ENV_ADDRESS) or None
    count = num_processes if num_processes is not None else _int_env(env, ENV_COUNT)
    index = process_id if process_id is not None else _int_env(env, ENV_ID)
    given = {"coordinator_address": address, "num_processes": count, "process_id": index}
    if any(v is not None for v in given.values()):
        missing = [k for k, v in given.items() if v is None]
        if missing and mode == "auto":
            raise ConfigError(
                f"A multi-process run needs --coordinator_address, --num_processes and "
                f"--process_id together (or {ENV_ADDRESS}, {ENV_COUNT}, {ENV_ID}); missing: "
                f"{', '.join('--' + m for m in missing)}."
            )
        if count is not None and index is not None and not 0 <= index < count:
            raise ConfigError(f"--process_id={index} must be in [0, --num_processes={count}).")
        return Plan("explicit", {k: v for k, v in given.items() if v is not None})
    if mode == "on":
        return Plan("detect", {})
    if all(v in env for v in _SLURM_VARS) and int(env["SLURM_NTASKS"]) > 1:
        return Plan("slurm", {})
    if on_tpu_vm() if tpu is None else tpu:
        return Plan("tpu", {})
    return Plan("single", {})


def initialize(run: Plan) -> None:
    """Starts JAX's distributed runtime as `run` says (nothing for a single process).

    Must run before anything touches a JAX backend. CPU processes exchange collectives through
    gloo (the CPU client has no other cross-process transport); GPU and TPU ignore that setting.
    """
    if run.source == "single":
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**run.kwargs)
    logging.info(
        "Distributed (%s): process %d of %d, %d local of %d devices.",
        run.source,
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )


def first_on_process_0(fn: Callable[[], T], name: str, timeout_s: int = 3600) -> T:
    """`fn()` on process 0 first, then on the others: for work that fills a shared cache.

    Preparing a TFDS data set from every process at once into one shared folder would race;
    so process 0 prepares, and the others then find it prepared (or, on hosts with their own
    disks, prepare their own copy). If process 0 fails, the others raise the same error instead
    of waiting: the outcome travels through the coordination service's key-value store.
    """
    if not jax.distributed.is_initialized() or jax.process_count() == 1:
        return fn()
    # The coordination service's client: Orbax uses it the same way for its barriers.
    from jax._src.distributed import global_state

    key = f"mtl/{name}"
    if jax.process_index() == 0:
        try:
            result = fn()
        except (ConfigError, DataError) as e:
            global_state.client.key_value_set(key, f"{type(e).__name__}:{e}")
            raise
        except Exception as e:
            global_state.client.key_value_set(key, f"error:{type(e).__name__}: {e}")
            raise
        global_state.client.key_value_set(key, "ok")
        return result
    outcome = global_state.client.blocking_key_value_get(key, timeout_s * 1000)
    kind, _, message = outcome.partition(":")
    if kind == "ConfigError":
        raise ConfigError(message)
    if kind in ("DataError", "CheckpointError"):
        raise DataError(message)
    if kind == "error":
        raise RuntimeError(f"Process 0 failed in {name}: {message}")
    return fn()


def _int_env(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"Environment variable {name}={value!r} must be an integer.") from None
