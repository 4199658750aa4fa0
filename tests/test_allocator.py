"""The entry points' restart under TCMalloc (mtl/allocator.py), in real subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mtl import allocator
from scripts.faults import REPO

# What an entry point's `main` does first, then what it ran under and whether it restarted.
_PROGRAM = (
    "import os\n"
    "from mtl import allocator\n"
    "allocator.use_tcmalloc()\n"
    "print(allocator.current_allocator(), os.environ.get('MTL_MALLOC_RESTARTED', '-'))\n"
)


def _run(**env_changes: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MTL_") and k != "LD_PRELOAD"}
    env.update({k: v for k, v in env_changes.items() if v is not None})
    return subprocess.run(
        [sys.executable, "-c", _PROGRAM],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_default_runs_under_tcmalloc_when_installed_else_says_how_to_get_it():
    result = _run()
    assert result.returncode == 0, result.stderr
    if allocator.find_tcmalloc() is not None:
        assert result.stdout.split() == ["tcmalloc", "1"]
    else:
        assert result.stdout.split() == ["system", "-"]
        assert "TCMalloc not found" in result.stderr
        assert "libtcmalloc-minimal4" in result.stderr


def test_system_keeps_glibc_malloc_without_restarting():
    result = _run(MTL_MALLOC="system")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["system", "-"]
    assert "TCMalloc" not in result.stderr


def test_an_explicit_library_is_preloaded():
    library = allocator.find_tcmalloc()
    if library is None:  # nothing to preload here: the path must then be refused
        result = _run(MTL_TCMALLOC="/nonexistent/libtcmalloc.so")
        assert result.returncode != 0
        return
    path = library if os.path.isabs(library) else _resolve(library)
    result = _run(MTL_TCMALLOC=path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["tcmalloc", "1"]


def test_a_preload_that_does_not_take_runs_once_on_glibc_malloc(tmp_path):
    not_a_library = tmp_path / "libtcmalloc_fake.so"
    not_a_library.write_text("not an ELF file")
    result = _run(MTL_TCMALLOC=str(not_a_library))
    assert result.returncode == 0, result.stderr
    # Restarted once, found no TCMalloc mapped, and went on instead of restarting again.
    assert result.stdout.split() == ["system", "1"]
    assert "did not take" in result.stderr


@pytest.mark.parametrize(
    "env, message",
    [
        (dict(MTL_MALLOC="jemalloc"), "$MTL_MALLOC='jemalloc': use one of tcmalloc, system"),
        (dict(MTL_TCMALLOC="/nonexistent/libtcmalloc.so"), "is not a file"),
    ],
)
def test_bad_settings_are_one_clear_error(env, message):
    result = _run(**env)
    assert result.returncode != 0
    assert message in result.stderr


def test_launch_train_reports_a_bad_setting_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "launch.train", "--config=configs/sinusoid_maml.py"]
        + [f"--workdir={tmp_path / 'run'}"],
        cwd=REPO,
        env=dict(os.environ, MTL_MALLOC="tc"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: $MTL_MALLOC='tc': use one of tcmalloc, system."
    )
    assert not (tmp_path / "run").exists()


def _resolve(soname: str) -> str:
    """The file the dynamic loader's cache maps `soname` to."""
    cache = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
    return next(line.split("=>")[1].strip() for line in cache.splitlines() if soname in line)
