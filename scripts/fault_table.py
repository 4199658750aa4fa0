"""Runs every fault a long run can meet, on real `launch.train` processes, and tabulates what
the user saw and what survived. The table in docs/faults.md is its output.

    .venv/bin/python -m scripts.fault_table --data_dir=../shared/data/omniglot \
        --readme=docs/faults.md

Each fault runs in its own workdir under `--root` (a fresh temporary folder by default) on a
small Omniglot model (conv4, 8 filters); the wrong-shaped weight goes through `launch.convert`
in a copy of all-MiniLM-L6-v2. Nothing is mocked: signals go to the processes, checkpoints are
Orbax folders on disk, the corrupt image sits in a copy of the real zip.

`--only=NAME,...` reruns some faults; the other rows come from the last run in the same
`--root`, or else stay as they are in `--readme`'s table:

    .venv/bin/python -m scripts.fault_table --only=wrong_shape_weight --readme=docs/faults.md
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable

from absl import app, flags

from scripts import faults

_DATA_DIR = flags.DEFINE_string("data_dir", "../shared/data/omniglot", "The Omniglot zips.")
_ROOT = flags.DEFINE_string("root", None, "Where the runs go (default: a new temporary folder).")
_README = flags.DEFINE_string("readme", None, "Replace the table between the markers here.")
_ONLY = flags.DEFINE_list(
    "only",
    [],
    "Run only these faults (names as in FAULTS); the other rows come from the last "
    "run in the same --root, or else from the table in --readme.",
)
# Tests import several of these scripts into one process, and their flags share names
# (root, steps...): let a later definition replace an earlier one instead of failing.
for _holder in (_DATA_DIR, _ROOT, _README, _ONLY):
    flags.FLAGS[_holder.name].allow_override = True

START, END = "<!-- fault-table:start -->", "<!-- fault-table:end -->"
SMALL = {
    "num_steps": 30,
    "batch_size": 32,
    "eval_batch_size": 512,
    "log_every": 2,
    "checkpoint.every": 10,
    "model.conv4.filters": 8,
    "optimizer.schedule": "constant",
}
ONE_DEVICE = {"XLA_FLAGS": ""}


class Context:
    """Paths shared by the faults, and the command for a workdir."""

    def __init__(self, root: pathlib.Path, data_dir: str):
        self.root, self.data_dir = root, str(pathlib.Path(data_dir).resolve())
        self.tfds_dir = str(root / "tfds")

    def args(self, name: str, launcher=(), data_dir=None, tfds_dir=None, **overrides):
        data = {
            "data.data_dir": data_dir or self.data_dir,
            "data.tfds_dir": tfds_dir or self.tfds_dir,
        }
        overrides = {**data, **SMALL, **overrides}
        return faults.train_command(self.root / name, overrides, launcher=launcher)

    def finished(self, name: str, **overrides) -> pathlib.Path:
        """A workdir with a finished run in it."""
        code, out = faults.run(self.args(name, **overrides), env=ONE_DEVICE)
        if code:
            raise RuntimeError(f"reference run failed:\n{out[-3000:]}")
        return self.root / name


def _wait_step(workdir: pathlib.Path, step: int, run: faults.Run, timeout: float = 600) -> None:
    """Until process 0 has logged `step` (fails if the run ends first)."""
    path, deadline = workdir / "metrics.jsonl", time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            lines = path.read_text().splitlines()
            if lines and json.loads(lines[-1])["step"] >= step:
                return
        if run.proc.poll() is not None:
            raise RuntimeError(f"the run ended before step {step}:\n{run.text[-3000:]}")
        time.sleep(0.05)
    raise RuntimeError(f"step {step} not reached in {timeout}s")


def _error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith("error: ")]
    return lines[-1] if lines else "(no error line)"


def _saved_steps(output: str) -> dict[int, int]:
    """Process -> step it saved on a stop request (prefix `[i]` from launch.local)."""
    found = re.finditer(r"^(?:\[(\d)\] )?.*Stop requested: saved step (\d+)", output, re.M)
    return {int(m.group(1) or 0): int(m.group(2)) for m in found}


def _resumed(output: str) -> str:
    steps = sorted(set(re.findall(r"Resumed from \S+ at step (\d+)", output)))
    return ", ".join(steps) or "none"


def sigterm(ctx: Context) -> dict:
    args = ctx.args("sigterm")
    run = faults.Run(args, ONE_DEVICE)
    _wait_step(ctx.root / "sigterm", 4, run)
    run.proc.send_signal(signal.SIGTERM)
    code = run.finish()
    saved = _saved_steps(run.text)
    code2, out2 = faults.run(args, env=ONE_DEVICE)
    return {
        "fault": "SIGTERM (one process)",
        "how": "`kill -TERM` after step 4",
        "exit": f"{code}, then {code2}",
        "sees": f"`Stop requested: saved step {saved.get(0)} in <workdir>; exiting.`",
        "survived": f"checkpoint {saved.get(0)}; the same command resumed at step "
        f"{_resumed(out2)} and finished {faults.checkpoint_steps(ctx.root / 'sigterm')[-1]}/30",
    }


def _two_process(ctx: Context, name: str, only_one: bool) -> dict:
    launcher = [sys.executable, "-m", "launch.local", "--num_processes=2"]
    launcher += ["--cpu_devices_per_process=1", "--"]
    args = ctx.args(name, launcher=launcher)
    run = faults.Run(args, ONE_DEVICE)
    pid_1 = int(run.wait_for(r"\[launch\] process 1: pid (\d+)").group(1))
    _wait_step(ctx.root / name, 4, run)
    if only_one:
        os.kill(pid_1, signal.SIGTERM)  # as a TPU host under maintenance: the others learn it
    else:
        run.proc.send_signal(signal.SIGTERM)  # the launcher passes it on, as srun does
    code = run.finish()
    saved = _saved_steps(run.text)
    code2, out2 = faults.run(args, env=ONE_DEVICE)
    target = "process 1 only" if only_one else "the launcher (forwarded to both)"
    return {
        "fault": f"SIGTERM, 2 processes, to {'one' if only_one else 'all'}",
        "how": f"`kill -TERM` to {target} after step 4",
        "exit": f"{code}, then {code2}",
        "sees": f"`[0] ... saved step {saved.get(0)}`, `[1] ... saved step {saved.get(1)}`",
        "survived": f"one checkpoint, step {saved.get(0)}, written by both; resumed at step "
        f"{_resumed(out2)} on both and finished "
        f"{faults.checkpoint_steps(ctx.root / name)[-1]}/30",
    }


def sigterm_two_all(ctx: Context) -> dict:
    return _two_process(ctx, "sigterm_two_all", only_one=False)


def sigterm_two_one(ctx: Context) -> dict:
    return _two_process(ctx, "sigterm_two_one", only_one=True)


def sigkill_during_save(ctx: Context) -> dict:
    name = "sigkill"
    overrides = {"model.trunk": "mlp", "model.mlp.hidden": "(1024,1024)", "checkpoint.every": 3}
    args = ctx.args(name, **overrides)
    killed = faults.kill_during_save(args, ctx.root / name)
    before = _train_records(ctx.root / name)
    code2, out2 = faults.run(args, env=ONE_DEVICE)
    after = _train_records(ctx.root / name, last=True)
    restored = int(_resumed(out2))
    redone = [s for s in before if s > restored]
    same = all(before[s] == after[s] for s in redone)
    cleared = "cleared" if not faults.partial_checkpoints(ctx.root / name) else "STILL THERE"
    return {
        "fault": "SIGKILL during an async save",
        "how": f"`kill -KILL` while `{killed.partial[0].name}` was half written",
        "exit": f"-9, then {code2}",
        "sees": f"`Resumed from <workdir>/checkpoints at step {restored}.`",
        "survived": f"complete checkpoints {killed.complete} kept; the half-written one ignored "
        f"and {cleared}; logged steps {redone} recomputed "
        f"{'identically' if same and redone else 'DIFFERENTLY'}; finished "
        f"{faults.checkpoint_steps(ctx.root / name)[-1]}/30",
    }


def _train_records(workdir: pathlib.Path, last: bool = False) -> dict[int, dict]:
    """Train records of metrics.jsonl by step (first or last of each), without timings."""
    records = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if any(k.startswith("train/") for k in record) and (last or record["step"] not in records):
            records[record["step"]] = {k: v for k, v in record.items() if k != "steps_per_sec"}
    return records


def damaged_checkpoint(ctx: Context) -> dict:
    workdir = ctx.finished("damaged")
    newest = faults.checkpoint_steps(workdir)[-1]
    faults.damage_checkpoint(workdir, newest)
    before = faults.fingerprint(workdir)
    code, out = faults.run(ctx.args("damaged"), env=ONE_DEVICE)
    kept = "all files unchanged" if faults.fingerprint(workdir) == before else "FILES CHANGED"
    return {
        "fault": "Damaged checkpoint",
        "how": f"array files of the newest checkpoint ({newest}) truncated",
        "exit": str(code),
        "sees": _error_line(out),
        "survived": f"{kept} ({len(before)} files); older checkpoints listed",
    }


def other_model(ctx: Context) -> dict:
    workdir = ctx.finished("other_model")
    (workdir / "config.json").unlink()  # as if the checkpoints were copied from elsewhere
    before = faults.fingerprint(workdir)
    code, out = faults.run(ctx.args("other_model", **{"model.conv4.filters": 16}), ONE_DEVICE)
    listed = [line.strip() for line in out.splitlines() if line.startswith("  params/")]
    kept = "all files unchanged" if faults.fingerprint(workdir) == before else "FILES CHANGED"
    return {
        "fault": "Checkpoint of another model",
        "how": "resume with `--config.model.conv4.filters=16` (saved: 8), no config.json",
        "exit": str(code),
        "sees": _error_line(out) + (f" ... first: `{listed[0]}`" if listed else ""),
        "survived": kept,
    }


def corrupt_image(ctx: Context) -> dict:
    data = ctx.root / "corrupt_data"
    data.mkdir(exist_ok=True)
    for zip_path in pathlib.Path(ctx.data_dir).glob("*.zip"):
        shutil.copy(zip_path, data / zip_path.name)
    member = faults.corrupt_zip_copy(
        pathlib.Path(ctx.data_dir) / "images_background_small1.zip",
        data / "images_background_small1.zip",
    )
    code, out = faults.run(
        ctx.args("corrupt_image", data_dir=str(data), tfds_dir=str(ctx.root / "tfds_corrupt")),
        ONE_DEVICE,
    )
    named = "yes" if member in out else "NO"
    return {
        "fault": "Corrupt image in the data",
        "how": "one PNG in a copy of `images_background_small1.zip` replaced by junk",
        "exit": str(code),
        "sees": _error_line(out),
        "survived": f"stopped before training; member named: {named}",
    }


def missing_data(ctx: Context) -> dict:
    code, out = faults.run(ctx.args("missing", data_dir=str(ctx.root / "nowhere")), ONE_DEVICE)
    return {
        "fault": "Data directory missing",
        "how": "`--config.data.data_dir=<root>/nowhere`",
        "exit": str(code),
        "sees": _error_line(out),
        "survived": "nothing written to the workdir",
    }


def empty_data(ctx: Context) -> dict:
    empty = ctx.root / "empty"
    empty.mkdir(exist_ok=True)
    code, out = faults.run(ctx.args("empty", data_dir=str(empty)), ONE_DEVICE)
    return {
        "fault": "Data directory empty",
        "how": "`--config.data.data_dir=<root>/empty`",
        "exit": str(code),
        "sees": _error_line(out),
        "survived": "nothing written to the workdir",
    }


def nan_loss(ctx: Context) -> dict:
    name = "nan"
    overrides = {"optimizer.name": "sgd", "optimizer.learning_rate": 1e30, "checkpoint.every": 1}
    code, out = faults.run(ctx.args(name, **overrides), ONE_DEVICE)
    steps = faults.checkpoint_steps(ctx.root / name)
    return {
        "fault": "NaN / inf loss",
        "how": "SGD with learning rate 1e30",
        "exit": str(code),
        "sees": _error_line(out),
        "survived": f"checkpoints {steps} (all before the bad step) kept",
    }


def mistyped_field(ctx: Context) -> dict:
    args = ctx.args("mistyped")
    args.append("--config.checkpoint.evrey=5")
    code, out = faults.run(args, ONE_DEVICE)
    return {
        "fault": "Mistyped config field",
        "how": "`--config.checkpoint.evrey=5`",
        "exit": str(code),
        "sees": _error_line(out),
        "survived": "nothing started",
    }


def wrong_shape_weight(ctx: Context) -> dict:
    from mtl.convert import package_dir

    name = "encoder.layer.3.intermediate.dense.weight"
    folder = ctx.root / "wrong_shape"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    old, new = faults.wrong_shape_copy(package_dir(), folder / "hf", name)
    before = faults.fingerprint(folder)
    args = [sys.executable, "-m", "launch.convert", f"--hf_dir={folder / 'hf'}"]
    code, out = faults.run([*args, f"--out={folder / 'converted'}"], ONE_DEVICE)
    error = out[out.find("error: ") :].splitlines() if "error: " in out else ["(no error line)"]
    clean = os.listdir(folder) == ["hf"] and faults.fingerprint(folder) == before
    return {
        "fault": "Converted weight of the wrong shape",
        "how": f"`{name}` cut from {old} to {new} in a copy of all-MiniLM-L6-v2 (config.json "
        "unchanged), then `python -m launch.convert`",
        "exit": str(code),
        "sees": " ".join(line.strip() for line in error),
        "survived": "nothing written (no output, no temporary folder); source files unchanged"
        if clean
        else "FILES CHANGED",
    }


def _line(output: str, pattern: str) -> str:
    """The first output line containing `pattern`, without absl's prefix."""
    for line in output.splitlines():
        if pattern in line:
            return re.sub(r"^(\[\d\] )?[IWEF]\d{4} [\d:.]+ +\d+ \S+\] ", r"\1", line).strip()
    return "(no such line)"


def second_run(ctx: Context) -> dict:
    name = "second_run"
    args = ctx.args(name, num_steps=400)
    first = faults.Run(args, ONE_DEVICE)
    _wait_step(ctx.root / name, 4, first)
    first.proc.send_signal(signal.SIGSTOP)  # still: its files can be compared before and after
    before = faults.fingerprint(ctx.root / name)
    code, out = faults.run(args, env=ONE_DEVICE)
    same = faults.fingerprint(ctx.root / name) == before
    first.proc.send_signal(signal.SIGCONT)
    first.proc.send_signal(signal.SIGTERM)
    code1 = first.finish()
    return {
        "fault": "Second run on a held workdir",
        "how": "the same command started again while the first run was at step 4",
        "exit": f"{code} (the first run: {code1})",
        "sees": _error_line(out),
        "survived": f"the first run's {len(before)} files "
        f"{'unchanged by the second' if same else 'CHANGED'}; it went on and saved on SIGTERM",
    }


def third_process(ctx: Context) -> dict:
    name = "third_process"
    launcher = [sys.executable, "-m", "launch.local", "--num_processes=2"]
    launcher += ["--cpu_devices_per_process=1", "--"]
    run = faults.Run(ctx.args(name, launcher=launcher, num_steps=400), ONE_DEVICE)
    pids = [int(run.wait_for(rf"\[launch\] process {i}: pid (\d+)").group(1)) for i in (0, 1)]
    _wait_step(ctx.root / name, 4, run)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    before = faults.fingerprint(ctx.root / name)
    code, out = faults.run(ctx.args(name, num_steps=400), env=ONE_DEVICE)
    same = faults.fingerprint(ctx.root / name) == before
    for pid in pids:
        os.kill(pid, signal.SIGCONT)
    run.proc.send_signal(signal.SIGTERM)
    code2 = run.finish()
    return {
        "fault": "A third process on a 2-process run's workdir",
        "how": "one `launch.train` process started on the workdir of a 2-process run at step 4",
        "exit": f"{code} (the 2-process run: {code2})",
        "sees": _error_line(out),
        "survived": f"the run's {len(before)} files {'unchanged' if same else 'CHANGED'}; "
        "both processes went on and saved on SIGTERM",
    }


def stale_lock(ctx: Context) -> dict:
    name = "stale_lock"
    args = ctx.args(name, num_steps=200)  # long enough to be killed mid-run
    run = faults.Run(args, ONE_DEVICE)
    deadline = time.monotonic() + 600
    while 10 not in faults.checkpoint_steps(ctx.root / name):
        if run.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"no checkpoint 10:\n{run.text[-3000:]}")
        time.sleep(0.01)
    run.proc.send_signal(signal.SIGKILL)
    run.finish()
    left = (ctx.root / name / "run.lock").exists()
    code, out = faults.run(args, env=ONE_DEVICE)
    return {
        "fault": "Lock left by a killed run",
        "how": "`kill -KILL` once checkpoint 10 was complete (the lock file stays), then the "
        "same command",
        "exit": f"-9, then {code}",
        "sees": f"`{_line(out, 'Taking over the lock')}`",
        "survived": f"lock file left: {'yes' if left else 'no'}; taken over; resumed at step "
        f"{_resumed(out)} and finished {faults.checkpoint_steps(ctx.root / name)[-1]}/200",
    }


def ctrl_c(ctx: Context) -> dict:
    name = "ctrl_c"
    args = ctx.args(name)
    run = faults.Run(args, ONE_DEVICE)
    _wait_step(ctx.root / name, 4, run)
    run.proc.send_signal(signal.SIGINT)
    code = run.finish()
    saved = _saved_steps(run.text)
    code2, out2 = faults.run(args, env=ONE_DEVICE)
    return {
        "fault": "Ctrl-C",
        "how": "`kill -INT` (as Ctrl-C in its terminal) after step 4",
        "exit": f"{code}, then {code2}",
        "sees": f"`{_line(run.text, 'Ctrl-C:')}`, then `Stop requested: saved step "
        f"{saved.get(0)} in <workdir>; exiting.`",
        "survived": f"checkpoint {saved.get(0)}; the same command resumed at step "
        f"{_resumed(out2)} and finished {faults.checkpoint_steps(ctx.root / name)[-1]}/30",
    }


def ctrl_c_two(ctx: Context) -> dict:
    name = "ctrl_c_two"
    launcher = [sys.executable, "-m", "launch.local", "--num_processes=2"]
    launcher += ["--cpu_devices_per_process=1", "--"]
    args = ctx.args(name, launcher=launcher, num_steps=400)
    run = faults.Run(args, ONE_DEVICE)
    pids = [int(run.wait_for(rf"\[launch\] process {i}: pid (\d+)").group(1)) for i in (0, 1)]
    _wait_step(ctx.root / name, 4, run)
    for pid in (run.proc.pid, *pids):  # what Ctrl-C in the terminal does: SIGINT to each
        os.kill(pid, signal.SIGINT)
    code = run.finish()
    saved = _saved_steps(run.text)
    code2, out2 = faults.run(ctx.args(name, launcher=launcher, num_steps=saved[0] + 4), ONE_DEVICE)
    return {
        "fault": "Ctrl-C, 2 processes",
        "how": "`kill -INT` to the launcher and both processes (as Ctrl-C in their terminal) "
        "after step 4",
        "exit": f"{code}, then {code2}",
        "sees": f"`[0] ... saved step {saved.get(0)}`, `[1] ... saved step {saved.get(1)}`",
        "survived": f"one checkpoint, step {saved.get(0)}, written by both; resumed at step "
        f"{_resumed(out2)} on both and finished "
        f"{faults.checkpoint_steps(ctx.root / name)[-1]}/{saved.get(0, 0) + 4}",
    }


def ctrl_c_twice(ctx: Context) -> dict:
    name = "ctrl_c_twice"
    overrides = {"model.trunk": "mlp", "model.mlp.hidden": "(1024,1024)", "checkpoint.every": 3}
    args = ctx.args(name, **overrides)
    run = faults.Run(args, ONE_DEVICE)
    _wait_step(ctx.root / name, 4, run)
    run.proc.send_signal(signal.SIGINT)
    run.wait_for("Ctrl-C: saving")
    run.proc.send_signal(signal.SIGINT)
    started = time.monotonic()
    code = run.finish()
    seconds = time.monotonic() - started
    complete = faults.checkpoint_steps(ctx.root / name)
    partial = [p.name for p in faults.partial_checkpoints(ctx.root / name)]
    code2, out2 = faults.run(args, env=ONE_DEVICE)
    return {
        "fault": "Ctrl-C twice",
        "how": "a second `kill -INT` right after the first one's message (1.8M-parameter MLP)",
        "exit": f"{code} ({seconds:.1f} s after it), then {code2}",
        "sees": f"`{_line(run.text, 'Second Ctrl-C')}`",
        "survived": f"complete checkpoints {complete}"
        + (f", unfinished {partial} ignored" if partial else "")
        + f"; resumed at step {_resumed(out2)} and finished "
        f"{faults.checkpoint_steps(ctx.root / name)[-1]}/30",
    }


def _damaged_file(ctx: Context, name: str, file: str, keep: int, how: str) -> dict:
    workdir = ctx.finished(name, num_steps=20)
    path = workdir / file
    path.write_text(path.read_text()[:keep])
    before = faults.fingerprint(workdir)
    code, out = faults.run(ctx.args(name), env=ONE_DEVICE)
    kept = "all files unchanged" if faults.fingerprint(workdir) == before else "FILES CHANGED"
    return {
        "fault": f"Truncated {file}",
        "how": how,
        "exit": str(code),
        "sees": _error_line(out),
        "survived": f"{kept} ({len(before)} files)",
    }


def truncated_config(ctx: Context) -> dict:
    how = "the workdir's config.json cut to its first 200 bytes, then the run resumed"
    return _damaged_file(ctx, "truncated_config", "config.json", 200, how)


def truncated_metrics(ctx: Context) -> dict:
    how = "the last record of metrics.jsonl cut short, then the run resumed"
    return _damaged_file(ctx, "truncated_metrics", "metrics.jsonl", -20, how)


FAULTS: dict[str, Callable[[Context], dict]] = {
    "sigterm": sigterm,
    "sigterm_two_all": sigterm_two_all,
    "sigterm_two_one": sigterm_two_one,
    "sigkill_during_save": sigkill_during_save,
    "ctrl_c": ctrl_c,
    "ctrl_c_two": ctrl_c_two,
    "ctrl_c_twice": ctrl_c_twice,
    "second_run": second_run,
    "third_process": third_process,
    "stale_lock": stale_lock,
    "damaged_checkpoint": damaged_checkpoint,
    "truncated_config": truncated_config,
    "truncated_metrics": truncated_metrics,
    "other_model": other_model,
    "corrupt_image": corrupt_image,
    "missing_data": missing_data,
    "empty_data": empty_data,
    "nan_loss": nan_loss,
    "mistyped_field": mistyped_field,
    "wrong_shape_weight": wrong_shape_weight,
}
NO_OMNIGLOT = {"wrong_shape_weight"}  # faults that need no prepared Omniglot data
COLUMNS = ("fault", "how", "exit", "sees", "survived")


def table(rows: list[dict], root: pathlib.Path, data_dir: str) -> str:
    """Markdown, with the run's temporary paths shortened to `<root>` / `<data>`."""
    lines = [
        "| fault | how it was caused | exit code | what the user sees | what survived |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        cells = [row[k] for k in COLUMNS]
        text = " | ".join(str(c).replace("|", "\\|") for c in cells)
        text = text.replace(str(root), "<root>").replace(data_dir, "<data>")
        lines.append(f"| {text} |")
    return "\n".join(lines)


def readme_rows(text: str) -> list[dict]:
    """The rows of the table between the markers of a README (as `table` wrote them)."""
    lines = text.split(START, 1)[1].split(END, 1)[0].strip().splitlines()[2:]
    rows = []
    for line in lines:
        cells = re.split(r"(?<!\\) \| ", line.strip()[2:-2])
        rows.append(dict(zip(COLUMNS, (c.replace("\\|", "|") for c in cells), strict=True)))
    return rows


def merge(old: list[dict], new: list[dict]) -> list[dict]:
    """`old` rows with those of `new` for the same fault in their place; the rest appended."""
    by_fault = {row["fault"]: row for row in new}
    merged = [by_fault.pop(row["fault"], row) for row in old]
    return merged + list(by_fault.values())


def main(argv: list[str]) -> None:
    del argv
    root = pathlib.Path(_ROOT.value or tempfile.mkdtemp(prefix="mtl_faults_")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    ctx = Context(root, _DATA_DIR.value)
    # Prepare the data once, outside any fault (the first run would otherwise time it too).
    chosen = set(_ONLY.value or FAULTS)
    if chosen - NO_OMNIGLOT and not (root / "prepare" / "results.json").exists():
        ctx.finished("prepare", num_steps=1)
    rows = []
    (root / "rows").mkdir(exist_ok=True)
    for name, fault in FAULTS.items():
        saved = root / "rows" / f"{name}.json"
        if name not in chosen:
            if saved.exists():
                rows.append(json.loads(saved.read_text()))
            continue
        start = time.time()
        rows.append(fault(ctx))
        saved.write_text(json.dumps(rows[-1]))
        print(f"{name}: done in {time.time() - start:.0f}s", flush=True)
    text = pathlib.Path(_README.value).read_text() if _README.value else ""
    if _README.value and (START not in text or END not in text):
        raise SystemExit(f"{_README.value} lacks the markers {START} ... {END}")
    if _ONLY.value and text:
        rows = merge(readme_rows(text), rows)
    markdown = table(rows, root, ctx.data_dir)
    print(markdown)
    if _README.value:
        readme = pathlib.Path(_README.value)
        head, rest = text.split(START, 1)
        readme.write_text(f"{head}{START}\n{markdown}\n{END}{rest.split(END, 1)[1]}")


if __name__ == "__main__":
    app.run(main)
