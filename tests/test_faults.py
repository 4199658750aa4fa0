"""Faults a long run meets, on real processes and files: each gives one clear message, and
nothing already saved is lost.

Ctrl-C and SIGTERM with resume are tested in test_train_loop.py (one process) and
test_multiprocess.py (two processes); here: SIGKILL in the middle of an async save, a second
Ctrl-C while saving, a damaged checkpoint or workdir file, a checkpoint of another model, a NaN
loss, bad data paths, and a mistyped config field.
"""

import json
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from configs import omniglot_mtl
from mtl import checkpoint, preemption, workdir_lock
from mtl.errors import CheckpointError, ConfigError, DataError, WorkdirFileError
from mtl.runs import supervised
from scripts import faults

TIMEOUT = 600


def _config(omniglot_dir, omniglot_tfds_dir, **overrides):
    config = omniglot_mtl.get_config()
    config.update(dict(num_steps=4, batch_size=32, eval_batch_size=512, log_every=1))
    config.model.conv4.filters = 8
    config.mesh.data = 1  # one of the 8 test devices: quicker to compile
    config.checkpoint.every = 2
    config.data.data_dir, config.data.tfds_dir = omniglot_dir, omniglot_tfds_dir
    for key, value in overrides.items():
        node, parts = config, key.split(".")
        for part in parts[:-1]:
            node = node[part]
        node[parts[-1]] = value
    return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory, omniglot_images, omniglot_dir, omniglot_tfds_dir):
    """A finished 4-step run in this process (checkpoints 1, 2 and 4), copied per test."""
    workdir = tmp_path_factory.mktemp("trained")
    supervised.train(_config(omniglot_dir, omniglot_tfds_dir), str(workdir))
    assert faults.checkpoint_steps(workdir) == [1, 2, 4]
    return workdir


@pytest.fixture
def workdir(trained, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


def test_sigkill_during_async_save_resumes_from_the_last_complete_checkpoint(
    tmp_path, omniglot_images, omniglot_dir, omniglot_tfds_dir
):
    workdir = tmp_path / "killed"
    overrides = {
        "data.data_dir": omniglot_dir,
        "data.tfds_dir": omniglot_tfds_dir,
        "num_steps": 12,
        "batch_size": 32,
        "eval_batch_size": 512,
        "log_every": 1,
        "checkpoint.every": 3,
        # An MLP trunk with 1.8M parameters: saves take long enough to be caught half written.
        "model.trunk": "mlp",
        "model.mlp.hidden": "(1024,1024)",
    }
    args = faults.train_command(workdir, overrides)
    killed = faults.kill_during_save(args, workdir)
    partial_step = int(killed.partial[0].name.split(".")[0])
    last_complete = killed.complete[-1]
    assert partial_step > last_complete  # the newest save was cut off half written
    first_run = _metrics(workdir)

    code, output = faults.run(args, timeout=TIMEOUT)
    assert code == 0, output[-3000:]
    assert f"Resumed from {workdir / 'checkpoints'} at step {last_complete}." in output
    assert not faults.partial_checkpoints(workdir)  # Orbax cleared the unfinished folder
    assert faults.checkpoint_steps(workdir)[-1] == 12
    # The resumed run recomputed the steps after the restored one exactly as the killed run
    # had: it restored the complete state of step `last_complete`, nothing half written.
    again = _metrics(workdir, last=True)
    recomputed = [s for s in first_run if s > last_complete]
    assert recomputed, "the killed run logged no step after its last complete checkpoint"
    for step in recomputed:
        assert first_run[step] == again[step], step


def test_second_ctrl_c_while_saving_exits_at_once_and_keeps_the_newest_checkpoint(
    tmp_path, omniglot_images, omniglot_dir, omniglot_tfds_dir
):
    workdir = tmp_path / "interrupted"
    overrides = {
        "data.data_dir": omniglot_dir,
        "data.tfds_dir": omniglot_tfds_dir,
        "num_steps": 400,
        "batch_size": 32,
        "eval_batch_size": 512,
        "checkpoint.every": 3,
        "model.trunk": "mlp",  # 1.8M parameters: a save takes a while
        "model.mlp.hidden": "(1024,1024)",
    }
    run = faults.Run(faults.train_command(workdir, overrides))
    deadline = time.monotonic() + TIMEOUT
    while not faults.checkpoint_steps(workdir):
        assert run.proc.poll() is None and time.monotonic() < deadline, run.text[-3000:]
        time.sleep(0.02)
    run.proc.send_signal(signal.SIGINT)
    run.wait_for("Ctrl-C: saving the current step")
    run.proc.send_signal(signal.SIGINT)
    assert run.finish(timeout=60) == preemption.INTERRUPT_EXIT_CODE, run.text[-3000:]
    assert "Second Ctrl-C: exiting now" in run.text and "Traceback" not in run.text
    assert not (workdir / workdir_lock.LOCK_FILE).exists()  # released on the way out
    newest = faults.checkpoint_steps(workdir)[-1]

    overrides["num_steps"] = newest + 1
    code, output = faults.run(faults.train_command(workdir, overrides), timeout=TIMEOUT)
    assert code == 0, output[-3000:]
    assert f"Resumed from {workdir / 'checkpoints'} at step {newest}." in output
    assert not faults.partial_checkpoints(workdir)


def _metrics(workdir, last=False) -> dict[int, dict]:
    """Train records of metrics.jsonl by step (the first or the last record of each step)."""
    records = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "train/loss/Greek" in record and (last or record["step"] not in records):
            records[record["step"]] = {k: v for k, v in record.items() if k != "steps_per_sec"}
    return records


def test_damaged_checkpoint_names_it_and_the_older_ones_and_deletes_nothing(
    workdir, omniglot_dir, omniglot_tfds_dir
):
    damaged = faults.damage_checkpoint(workdir, 4)
    assert damaged
    before = faults.fingerprint(workdir)
    with pytest.raises(CheckpointError) as error:
        supervised.train(_config(omniglot_dir, omniglot_tfds_dir), str(workdir))
    message = str(error.value)
    assert f"{workdir / 'checkpoints' / '4'}, cannot be read" in message
    assert "resume from step 2" in message and "older checkpoints: 1, 2" in message
    assert faults.fingerprint(workdir) == before


def test_checkpoint_of_another_model_lists_the_mismatched_arrays(
    workdir, omniglot_dir, omniglot_tfds_dir
):
    config = _config(omniglot_dir, omniglot_tfds_dir, **{"model.conv4.filters": 16})
    before = faults.fingerprint(workdir)
    # With the run's config.json the config fields are named, before any data is read ...
    with pytest.raises(ConfigError, match=r"differs in: model \(model\.conv4\.filters: 8 -> 16\)"):
        supervised.train(config, str(workdir))
    # ... and without it (checkpoints copied from elsewhere) the arrays are.
    (workdir / "config.json").unlink()
    before.pop("config.json")
    with pytest.raises(ConfigError) as error:
        supervised.train(config, str(workdir))
    message = str(error.value)
    assert "holds a different model than the config builds" in message
    assert "params/trunk/blocks/0/conv/kernel: checkpoint (3, 3, 1, 8) float32, model " in message
    assert "(3, 3, 1, 16) float32" in message
    assert "Nothing was changed" in message
    assert faults.fingerprint(workdir) == before  # and no config.json recorded for the new one


def test_nan_loss_stops_names_step_and_tasks_and_keeps_the_good_checkpoint(
    tmp_path, omniglot_dir, omniglot_tfds_dir
):
    # SGD with a huge step: the parameters after step 1 are finite but the loss at step 2 is not.
    config = _config(
        omniglot_dir,
        omniglot_tfds_dir,
        **{"optimizer.name": "sgd", "optimizer.learning_rate": 1e30, "checkpoint.every": 1},
    )
    with pytest.raises(FloatingPointError) as error:
        supervised.train(config, str(tmp_path))
    match = re.search(r"Non-finite loss of task\(s\) (.+) at step (\d+)\.", str(error.value))
    assert match, str(error.value)
    bad_step = int(match.group(2))
    assert set(match.group(1).split(", ")) <= set(omniglot_mtl.ALPHABETS)
    assert "the newest good checkpoint" in str(error.value)
    steps = faults.checkpoint_steps(tmp_path)
    assert steps and steps[-1] < bad_step  # the broken state never reached disk
    kept = checkpoint.read_on_host(str(tmp_path / "checkpoints"))
    assert all(np.isfinite(a).all() for a in _float_leaves(kept["params"]))


def _float_leaves(tree):
    import jax

    return [a for a in jax.tree_util.tree_leaves(tree) if np.issubdtype(a.dtype, np.floating)]


@pytest.mark.parametrize(
    "name, keep, message",
    [
        ("config.json", 300, r"config\.json is damaged or truncated \(it ends in the middle"),
        ("config.json", 0, r"config\.json is damaged or truncated \(it is empty\)"),
        ("metrics.jsonl", -5, r"metrics\.jsonl is damaged or truncated \(line \d+ is cut off"),
    ],
)
def test_damaged_workdir_file_names_it_and_the_fix_and_deletes_nothing(
    workdir, omniglot_dir, omniglot_tfds_dir, name, keep, message
):
    path = workdir / name
    path.write_text(path.read_text()[:keep])  # as a full disk or a killed copy leaves it
    before = faults.fingerprint(workdir)
    with pytest.raises(WorkdirFileError, match=message) as error:
        supervised.train(_config(omniglot_dir, omniglot_tfds_dir), str(workdir))
    assert "Nothing was deleted." in str(error.value)
    fix = "Move it away and run the config" if name == "config.json" else "delete that line"
    assert fix in str(error.value)
    assert faults.fingerprint(workdir) == before


def test_damaged_files_read_from_other_workdirs_are_named(workdir):
    """A teacher's or learner's config.json, a learner's results.json and tokenizer, a
    converted checkpoint's model.json: each damaged one is one error naming it."""
    from mtl.runs import distillation, meta
    from mtl.transfer import restore

    (workdir / "config.json").write_text('{"model": {"trunk": ')
    for read in (distillation.load_teacher, meta.load_learner, restore.find_source):
        with pytest.raises(WorkdirFileError, match=r"config\.json is damaged or truncated"):
            read(str(workdir), *([None, ()] if read is distillation.load_teacher else []))
    (workdir / "results.json").write_text('{"selected": {"finetune_lr": 0.0')
    with pytest.raises(WorkdirFileError, match="Run the same launch.train command again"):
        meta._selected(str(workdir))
    converted = workdir / "converted"
    (converted / restore.PARAMS_DIR).mkdir(parents=True)
    (converted / restore.MODEL_FILE).write_text("")
    with pytest.raises(WorkdirFileError, match=r"model\.json is damaged .* Convert the checkpoint"):
        restore.find_source(str(converted))
    # A text learner's tokenizer (kept in its workdir, or a converted checkpoint's).
    from mtl.convert import package_dir
    from mtl.data import text

    tokenizer = workdir / "tokenizer"
    shutil.copytree(package_dir(), tokenizer)
    (tokenizer / "tokenizer.json").write_text((tokenizer / "tokenizer.json").read_text()[:999])
    with pytest.raises(DataError, match=r"The tokenizer in .* cannot be read \(JSONDecodeError"):
        text.load_tokenizer(str(tokenizer))


@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_bad_data_dir_fails_before_touching_the_workdir(workdir, tmp_path, omniglot_tfds_dir, kind):
    data_dir = tmp_path / kind
    if kind == "empty":
        data_dir.mkdir()
    before = faults.fingerprint(workdir)
    message = "does not exist" if kind == "missing" else "holds none of the expected zips"
    with pytest.raises(DataError, match=message):
        supervised.train(_config(str(data_dir), omniglot_tfds_dir), str(workdir))
    assert faults.fingerprint(workdir) == before


@pytest.mark.parametrize(
    "override, message",
    [
        ("num_stpes=5", "Did you mean --config.num_steps?"),
        (
            "checkpoint.evrey=5",
            "Did you mean --config.checkpoint.every? Fields of config.checkpoint:",
        ),
        ("model.conv4.filterz=3", "Did you mean --config.model.conv4.filters?"),
    ],
)
def test_mistyped_config_override_names_the_closest_field(tmp_path, override, message):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "launch.train",
            "--config=configs/omniglot_mtl.py",
            f"--workdir={tmp_path}",
            f"--config.{override}",
        ],
        cwd=faults.REPO,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: Unknown config field"), result.stderr[-2000:]
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.iterdir())  # nothing written


def test_fault_table_only_reruns_one_row_and_keeps_the_readme_rows():
    from scripts import fault_table

    old = [
        dict(zip(fault_table.COLUMNS, (f"f{i}", "a | b", "2", "x", "y"), strict=True))
        for i in (1, 2)
    ]
    text = "\n".join(
        [
            "intro",
            fault_table.START,
            fault_table.table(old, pathlib.Path("/root"), "/data"),
            fault_table.END,
        ]
    )
    assert fault_table.readme_rows(text) == old  # escaped pipes survive the round trip
    new = [old[1] | {"exit": "0"}, old[0] | {"fault": "f3"}]
    merged = fault_table.merge(old, new)
    assert [(r["fault"], r["exit"]) for r in merged] == [("f1", "2"), ("f2", "0"), ("f3", "2")]
