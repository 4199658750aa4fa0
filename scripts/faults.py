"""Fault injection on real runs: signals, kills in the middle of a save, damaged files.

Used by the tests (which check what happens) and by `scripts/fault_table.py` (which records
what a user sees). Everything here acts on real processes and real files: a `launch.train`
subprocess, the Orbax checkpoint folders it writes, copies of the Omniglot zips.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Mapping, Sequence

REPO = pathlib.Path(__file__).resolve().parents[1]
TMP_MARK = ".orbax-checkpoint-tmp"  # Orbax writes a step here and renames it when complete


def train_command(
    workdir: os.PathLike,
    overrides: Mapping[str, object],
    config: str = "configs/omniglot_mtl.py",
    launcher: Sequence[str] = (),
) -> list[str]:
    """`python -m launch.train` with `--config.<k>=<v>` for each override (after `launcher`)."""
    return [
        *launcher,
        sys.executable,
        "-m",
        "launch.train",
        f"--config={config}",
        f"--workdir={workdir}",
        *(f"--config.{k}={v}" for k, v in overrides.items()),
    ]


class Run:
    """A command in the background; its merged output is collected line by line."""

    def __init__(self, args: Sequence[str], env: Mapping[str, str] | None = None):
        self.proc = subprocess.Popen(
            list(args),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=None if env is None else {**os.environ, **env},
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 600) -> re.Match:
        """The first output line matching `pattern`; fails if the run ends without one."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if match := re.search(pattern, line):
                    return match
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.02)
        raise RuntimeError(f"no output line matches {pattern!r}:\n{self.text[-3000:]}")

    def finish(self, timeout: float = 600) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=60)
        return code


def run(args: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 600):
    """Runs to the end; returns `(exit code, output)`."""
    r = Run(args, env)
    return r.finish(timeout), r.text


def checkpoint_steps(workdir: os.PathLike) -> list[int]:
    """Complete checkpoints (Orbax's finished step folders), oldest first."""
    folder = pathlib.Path(workdir) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


def partial_checkpoints(workdir: os.PathLike) -> list[pathlib.Path]:
    """Step folders Orbax has started but not finished writing."""
    folder = pathlib.Path(workdir) / "checkpoints"
    return sorted(folder.glob(f"*{TMP_MARK}*")) if folder.is_dir() else []


def fingerprint(folder: os.PathLike) -> dict[str, str]:
    """`{relative path: sha1}` of every file below `folder`: to show nothing was changed."""
    root = pathlib.Path(folder)
    return {
        str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@dataclasses.dataclass
class Killed:
    """What a SIGKILL in the middle of a save left behind."""

    partial: list[pathlib.Path]  # unfinished step folders at the moment of the kill, still there
    complete: list[int]  # finished steps
    output: str
    attempts: int


def kill_during_save(
    args: Sequence[str], workdir: os.PathLike, attempts: int = 5, timeout: float = 600
) -> Killed:
    """Starts `args`, SIGKILLs it while Orbax is writing a checkpoint, returns what is left.

    The kill lands once a complete checkpoint exists and a later one is half written (its
    unfinished folder already holds files). If that save finished in the instant between
    looking and killing, the same command is started again (it resumes) and a later save is
    tried, up to `attempts` times.
    """
    output = []
    for attempt in range(1, attempts + 1):
        proc = Run(args)
        deadline = time.monotonic() + timeout
        while not _half_written(workdir):
            if proc.proc.poll() is not None or time.monotonic() > deadline:
                proc.finish()
                raise RuntimeError(f"run ended before a save could be hit:\n{proc.text[-3000:]}")
            time.sleep(0.001)
        proc.proc.send_signal(signal.SIGKILL)
        proc.finish()
        output.append(proc.text)
        if partial := _half_written(workdir):
            return Killed(partial, checkpoint_steps(workdir), "".join(output), attempt)
    raise RuntimeError(f"no save was caught unfinished in {attempts} attempts")


def _half_written(workdir: os.PathLike) -> list[pathlib.Path]:
    """Unfinished step folders with files in them, later than a complete checkpoint."""
    complete = checkpoint_steps(workdir)
    if not complete:
        return []
    return [
        p
        for p in partial_checkpoints(workdir)
        if int(p.name.split(".")[0]) > complete[-1] and any(q.is_file() for q in p.rglob("*"))
    ]


def damage_checkpoint(workdir: os.PathLike, step: int) -> list[pathlib.Path]:
    """Truncates the array data files of checkpoint `step` (as a failing disk might)."""
    folder = pathlib.Path(workdir) / "checkpoints" / str(step)
    damaged = [p for p in folder.rglob("*") if p.is_file() and p.parent.name == "d"]
    for path in damaged:
        path.write_bytes(path.read_bytes()[:7])
    return damaged


def corrupt_zip_copy(source: os.PathLike, target: os.PathLike, nth_png: int = 100) -> str:
    """Copies zip `source` to `target` with one PNG's bytes replaced; returns that member."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        pngs = [i for i in src.infolist() if i.filename.endswith(".png")]
        bad = pngs[nth_png].filename
        for info in src.infolist():
            data = src.read(info.filename)
            dst.writestr(info, b"not a png" if info.filename == bad else data)
    return bad


def wrong_shape_copy(source: os.PathLike, target: os.PathLike, name: str) -> tuple[tuple, tuple]:
    """Copies a Hugging Face model directory with tensor `name` one row short in
    model.safetensors (config.json unchanged); returns the tensor's old and new shapes."""
    from safetensors.numpy import load_file, save_file

    shutil.copytree(source, target)
    path = pathlib.Path(target) / "model.safetensors"
    weights = load_file(path)
    old = weights[name].shape
    weights[name] = weights[name][:-1]
    save_file(weights, path, metadata={"format": "pt"})
    return tuple(old), tuple(weights[name].shape)
