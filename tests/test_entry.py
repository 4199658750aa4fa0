"""`mtl.entry.run`, the entry points' preamble, in real subprocesses (restarts replace them)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mtl import allocator
from scripts.faults import REPO

# A tiny entry point: what it ran under, as its `main` sees it, then an exit code of its own.
# Nothing imports JAX before `entry.run`: `import jax` sets TF_CPP_MIN_LOG_LEVEL=1 when unset.
_PROGRAM = """
import os, sys
from absl import logging
from mtl import allocator, entry

def main(argv):
    from mtl import logs

    quiet = any(isinstance(f, logs._LibraryInfoFilter) for f in logging.get_absl_handler().filters)
    print(
        os.environ.get("TF_CPP_MIN_LOG_LEVEL"),
        allocator.current_allocator(),
        "tcmalloc" in os.environ.get("LD_PRELOAD", ""),
        quiet,
        *argv[1:],
    )
    sys.exit(7)

entry.run(main, tcmalloc={tcmalloc})
"""


def _run(*args: str, tcmalloc: bool = True, **env_changes: str) -> subprocess.CompletedProcess:
    drop = ("MTL_", "LD_PRELOAD", "TF_CPP_MIN_LOG_LEVEL")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(env_changes)
    return subprocess.run(
        [sys.executable, "-c", _PROGRAM.format(tcmalloc=tcmalloc), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_default_sets_the_log_level_restarts_under_tcmalloc_and_runs_main_with_its_args():
    result = _run("a", "b")
    assert result.returncode == 7, result.stderr
    if allocator.find_tcmalloc() is None:
        assert result.stdout.split() == ["2", "system", "False", "True", "a", "b"]
        assert "TCMalloc not found" in result.stderr
    else:
        assert result.stdout.split() == ["2", "tcmalloc", "True", "True", "a", "b"]


@pytest.mark.parametrize("opt_out", [dict(MTL_MALLOC="system"), dict(tcmalloc=False)])
def test_opting_out_keeps_glibc_malloc(opt_out):
    result = _run(**opt_out)
    assert result.returncode == 7, result.stderr
    assert result.stdout.split() == ["2", "system", "False", "True"]
    assert "TCMalloc" not in result.stderr


def test_a_log_level_already_set_is_kept():
    result = _run(TF_CPP_MIN_LOG_LEVEL="0", MTL_MALLOC="system")
    assert result.returncode == 7, result.stderr
    assert result.stdout.split()[0] == "0"


def test_a_bad_setting_is_one_line_and_exit_code_2_before_main():
    result = _run(MTL_MALLOC="tc")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "error: $MTL_MALLOC='tc': use one of tcmalloc, system."
    ]
