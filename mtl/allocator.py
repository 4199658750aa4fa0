"""Runs the entry points under TCMalloc, with which XLA's CPU runtime is much faster.

XLA's CPU executables allocate and free their temporary buffers on every call, from several
threads. With glibc's malloc that costs a large share of a step: on the 2-core machine this
engine is developed on, our MAML meta-step, BERT fine-tuning step and PCGrad step take 1.3x to
1.6x as long as under TCMalloc (README, "CPU speed: the memory allocator"). The allocator
must be chosen before the process starts (`LD_PRELOAD`), so `use_tcmalloc` starts the
program again under it, with the same command line, before any JAX work.

    MTL_MALLOC=system   keep glibc's malloc (no restart)
    MTL_TCMALLOC=PATH   the library to preload (default: found by the dynamic loader's cache;
                        `scripts/setup.sh` installs Debian's libtcmalloc-minimal4 when it can)

Only Linux is handled; elsewhere the process keeps its allocator.
"""

from __future__ import annotations

import ctypes.util
import os
import sys

from absl import logging

from mtl.errors import ConfigError

CHOICE_ENV = "MTL_MALLOC"
PATH_ENV = "MTL_TCMALLOC"
CHOICES = ("tcmalloc", "system")
# Set in the restarted process, so a preload that did not take cannot restart it forever.
_RESTARTED_ENV = "MTL_MALLOC_RESTARTED"
# gperftools prints a line for every allocation above 1 GiB by default (a data set in memory).
_REPORT_ENV = "TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"


def find_tcmalloc() -> str | None:
    """The TCMalloc library to preload: `$MTL_TCMALLOC`, else the loader's, else None."""
    path = os.environ.get(PATH_ENV)
    if path:
        if not os.path.isfile(path):
            raise ConfigError(
                f"${PATH_ENV}={path!r} is not a file. Point it at libtcmalloc*.so, or unset it "
                f"to use the one the dynamic loader finds, or set {CHOICE_ENV}=system."
            )
        return path
    # The minimal build first: it lacks only the heap profiler, which we do not use.
    return ctypes.util.find_library("tcmalloc_minimal") or ctypes.util.find_library("tcmalloc")


def current_allocator() -> str:
    """'tcmalloc' or 'jemalloc' if that library is mapped into this process, else 'system'."""
    try:
        with open("/proc/self/maps") as maps:
            mapped = maps.read()
    except OSError:  # not Linux
        return "system"
    return next((name for name in ("tcmalloc", "jemalloc") if f"lib{name}" in mapped), "system")


def use_tcmalloc() -> None:
    """Restarts this program under TCMalloc unless it runs under it already or opts out.

    `mtl.entry.run` calls it before an entry point's `main`: the restart replaces the process
    (same PID, so SLURM and other process managers do not notice) and runs the whole command again.
    A bad `$MTL_MALLOC` or `$MTL_TCMALLOC` ends the program with one line and exit code 2.
    """
    try:
        _restart_under_tcmalloc()
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def _restart_under_tcmalloc() -> None:
    choice = os.environ.get(CHOICE_ENV) or "tcmalloc"  # set but empty: the default
    if choice not in CHOICES:
        raise ConfigError(f"${CHOICE_ENV}={choice!r}: use one of {', '.join(CHOICES)}.")
    # Never restart a test run that calls an entry point's `main` in its own process.
    if choice == "system" or not sys.platform.startswith("linux") or "pytest" in sys.modules:
        return
    if current_allocator() == "tcmalloc":
        return
    if os.environ.get(_RESTARTED_ENV):
        logging.warning("Preloading %s did not take; running on glibc's malloc.", find_tcmalloc())
        return
    library = find_tcmalloc()
    if library is None:
        logging.warning(
            "TCMalloc not found: running on glibc's malloc, with which XLA's CPU steps can take "
            "1.6x as long. Install it (Debian/Ubuntu: apt-get install libtcmalloc-minimal4), "
            "or set %s=system to keep glibc's malloc without this warning.",
            CHOICE_ENV,
        )
        return
    preload = ":".join(p for p in (library, os.environ.get("LD_PRELOAD")) if p)
    env = dict(os.environ, LD_PRELOAD=preload, **{_RESTARTED_ENV: "1"})
    env.setdefault(_REPORT_ENV, str(1 << 40))
    sys.stdout.flush()
    sys.stderr.flush()
    # `orig_argv` is the command as typed (`python -m launch.train --config=...`).
    os.execve(sys.executable, sys.orig_argv, env)
