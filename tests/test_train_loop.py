"""The multi-task run end to end: launcher output, the workdir lock, resume after Ctrl-C,
errors before compiling."""

import dataclasses
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import omniglot_mtl
from mtl import checkpoint, workdir_lock
from mtl.errors import ConfigError, DataError
from mtl.runs import supervised
from scripts import faults
from tests.helpers import without_tensorflow

REPO = pathlib.Path(__file__).resolve().parents[1]

# A small but real run: conv4 with 8 filters on all eight alphabets.
SMALL = dict(num_steps=40, batch_size=32, eval_batch_size=256, log_every=5)


def _flags(workdir, omniglot_dir, tfds_dir, **overrides):
    values = {**SMALL, "checkpoint.every": 10, "model.conv4.filters": 8, **overrides}
    return [
        sys.executable,
        "-m",
        "launch.train",
        "--config=configs/omniglot_mtl.py",
        f"--workdir={workdir}",
        f"--config.data.data_dir={omniglot_dir}",
        f"--config.data.tfds_dir={tfds_dir}",
        *(f"--config.{k}={v}" for k, v in values.items()),
    ]


def _run(args, **kwargs):
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300, **kwargs)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, omniglot_images, omniglot_dir, omniglot_tfds_dir):
    """One uninterrupted run of the launcher (the data is already prepared by the fixture)."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    # Without TensorFlow, as on the GPU machine: prepared data and TensorBoard need none.
    env = without_tensorflow(tmp_path_factory.mktemp("no_tf"))
    result = _run(_flags(workdir, omniglot_dir, omniglot_tfds_dir), env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, result


def test_launcher_reports_progress_metrics_and_test_results(finished_run):
    workdir, result = finished_run
    assert "step 40/40 | loss Balinese=" in result.stderr
    assert "steps/s | left" in result.stderr
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "train/loss/Greek" in r] == list(range(5, 41, 5))
    first, last = records[0], [r for r in records if "train/loss/Greek" in r][-1]
    mean_loss = lambda r: np.mean([v for k, v in r.items() if k.startswith("train/loss/")])  # noqa: E731
    assert mean_loss(last) < mean_loss(first)  # the loss drops
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(workdir / "tensorboard"))
    events.Reload()  # TensorBoard reads back what metrics.jsonl holds
    logged = [(e.step, e.value) for e in events.Scalars("train/loss/Greek")]
    expected = [(r["step"], r["train/loss/Greek"]) for r in records if "train/loss/Greek" in r]
    np.testing.assert_allclose(logged, expected, rtol=1e-6)
    results = json.loads((workdir / "results.json").read_text())
    assert set(results["test"]) == set(omniglot_mtl.ALPHABETS)
    assert results["test"]["Korean"]["count"] == 40 * 5  # 40 characters x 5 test drawers
    assert "Test metrics:" in result.stderr and "Korean" in result.stderr


def test_workdir_held_ctrl_c_saves_and_resume_takes_over_a_dead_lock_and_matches(
    finished_run, tmp_path, omniglot_dir, omniglot_tfds_dir
):
    """One run on its workdir: a second one is refused while it runs; Ctrl-C saves the step
    and exits 0; a lock left by a dead run is taken over; the resumed run ends bit for bit
    where the uninterrupted one did. (Ctrl-C and SIGTERM share the stop path: SIGTERM on two
    processes is in test_multiprocess.py.)"""
    reference_dir, _ = finished_run
    workdir = tmp_path / "interrupted"
    args = _flags(workdir, omniglot_dir, omniglot_tfds_dir)
    proc = subprocess.Popen(args, cwd=REPO, stderr=subprocess.PIPE, text=True)
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 240
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        assert proc.poll() is None and time.time() < deadline, "run ended before it was stopped"
        time.sleep(0.05)
    proc.send_signal(signal.SIGSTOP)  # holds still while the second run tries the workdir
    before = faults.fingerprint(workdir)
    second = _run(args)
    assert second.returncode == 2, second.stderr[-3000:]
    assert f"is in use by another run: process {proc.pid} on " in second.stderr
    assert "Traceback" not in second.stderr
    assert faults.fingerprint(workdir) == before  # the first run's files untouched

    proc.send_signal(signal.SIGINT)  # delivered on SIGCONT, as Ctrl-C in its terminal
    proc.send_signal(signal.SIGCONT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-3000:]
    assert "Ctrl-C: saving the current step" in stderr and "Traceback" not in stderr
    stopped_at = int(stderr.split("Stop requested: saved step ")[1].split()[0])
    assert 10 <= stopped_at < 40
    assert (workdir / "checkpoints" / str(stopped_at)).is_dir()
    assert not (workdir / "results.json").exists()
    assert not (workdir / workdir_lock.LOCK_FILE).exists()

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a run that died holding the lock (SIGKILL) leaves its file
    dead = workdir_lock.Holder(socket.gethostname(), gone.pid, 0.0, time.time(), "dead")
    (workdir / workdir_lock.LOCK_FILE).write_text(json.dumps(dataclasses.asdict(dead)))
    resumed = _run(args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"its process {gone.pid} is gone" in resumed.stderr
    assert f"at step {stopped_at}" in resumed.stderr
    expected = checkpoint.final_state(str(reference_dir))["params"]
    actual = checkpoint.final_state(str(workdir))["params"]
    jax.tree_util.tree_map(np.testing.assert_array_equal, expected, actual)


def test_config_errors_reach_the_user_as_one_line(tmp_path, omniglot_dir, omniglot_tfds_dir):
    result = _run(
        _flags(tmp_path, omniglot_dir, omniglot_tfds_dir, **{"weighting.name": "uncertainity"})
    )
    assert result.returncode == 2
    assert "error: Unknown weighting 'uncertainity'" in result.stderr
    assert "Did you mean 'uncertainty'?" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture
def config(omniglot_dir, omniglot_tfds_dir):
    config = omniglot_mtl.get_config()
    config.update(SMALL)
    config.data.data_dir = omniglot_dir
    config.data.tfds_dir = omniglot_tfds_dir
    return config


@pytest.fixture
def nothing_built(monkeypatch):
    """Fails the test if the loop gets as far as building (and so compiling) a model."""

    def fail(*args, **kwargs):
        raise AssertionError("the model was built before the bad input was reported")

    monkeypatch.setattr(supervised, "build_model", fail)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("model.trunk", "conv_4", r"Unknown trunk 'conv_4'.*Did you mean 'conv4'"),
        ("tasks.Greek.head", "classify", r"Unknown head 'classify'"),
        ("tasks.Greek.label", "Greeek", r"label field 'Greeek'.*Greek"),
        ("weighting.name", "gradnrom", r"Unknown weighting 'gradnrom'.*'gradnorm'"),
        ("data.name", "omniglot", r"Unknown data set 'omniglot'.*omniglot_alphabets"),
    ],
)
def test_unknown_names_fail_before_building(config, nothing_built, tmp_path, field, value, message):
    node, key = config, field.split(".")
    for part in key[:-1]:
        node = node[part]
    node[key[-1]] = value
    with pytest.raises(ConfigError, match=message):
        supervised.train(config, str(tmp_path))


def test_unknown_alphabet_in_config_argument():
    with pytest.raises(ConfigError, match=r"Unknown alphabet 'Grek'.*'Greek'"):
        omniglot_mtl.get_config("Grek")


def test_label_out_of_range_fails_before_building(config, nothing_built, tmp_path):
    config.tasks.Korean.num_outputs = 30
    with pytest.raises(DataError, match=r"Korean.*\[0, 39\].*num_outputs=40"):
        supervised.train(config, str(tmp_path))


def test_missing_data_dir_fails_before_building(config, nothing_built, tmp_path):
    config.data.data_dir = str(tmp_path / "no_such_dir")
    with pytest.raises(DataError, match=r"no_such_dir.*MTL_OMNIGLOT_DIR"):
        supervised.train(config, str(tmp_path / "work"))


def test_resume_with_a_different_model_is_refused(config, tmp_path):
    os.makedirs(tmp_path, exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps({"model": {"trunk": "mlp"}}))
    with pytest.raises(ConfigError, match="differs in: model"):
        supervised.train(config, str(tmp_path))
    assert json.loads((tmp_path / "config.json").read_text()) == {"model": {"trunk": "mlp"}}


def test_resume_ignores_option_blocks_of_trunks_not_in_use(config, tmp_path):
    """A run recorded before a trunk was registered (no block for it) still resumes."""
    checkpoint.record_config(str(tmp_path), config)
    recorded = json.loads((tmp_path / "config.json").read_text())
    del recorded["model"]["bert"]  # as recorded before the bert trunk existed
    recorded["model"]["mlp"]["hidden"] = [7]  # an unused trunk's options do not matter
    (tmp_path / "config.json").write_text(json.dumps(recorded))
    checkpoint.check_config(str(tmp_path), config, ("model",))
    config.model.conv4.filters += 1  # the trunk in use does
    with pytest.raises(ConfigError, match=r"model\.conv4\.filters"):
        checkpoint.check_config(str(tmp_path), config, ("model",))
