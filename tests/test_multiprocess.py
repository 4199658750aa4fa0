"""Two real processes on 127.0.0.1 (CPU collectives through gloo) form one run.

They train (the multi-task loop, sinusoid MAML, a run streaming image folders), refuse a third
process on their workdir, stop on SIGTERM or end at the same step, save one Orbax checkpoint
together, resume from it, and end with the parameters of a single process on a mesh of the
same shape.
"""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np

from mtl import checkpoint
from scripts import faults
from tests.conftest import QUICK_COMPILE
from tests.test_train_loop import _flags

REPO = pathlib.Path(__file__).resolve().parents[1]
# The suite's quick compiles (tests/conftest.py) in every process, without its 8 fake devices:
# one fake device per process, or two in the single process the runs are compared with.
TWO_DEVICES = f"{QUICK_COMPILE} --xla_force_host_platform_device_count=2"
TIMEOUT = 400  # generous: two cores are shared with other test workers

# A constant learning rate: then the run length changes nothing before the end, so a long run
# stopped at step s and resumed to s + 4 is comparable with a reference of s + 4 steps.
OVERRIDES = {"optimizer.schedule": "constant", "log_every": 2, "checkpoint.every": 1000}


def _launch_args(workdir, omniglot_dir, tfds_dir, **overrides):
    train = _flags(workdir, omniglot_dir, tfds_dir, **{**OVERRIDES, **overrides})
    local = [sys.executable, "-m", "launch.local", "--num_processes=2"]
    # One CPU device per process (the test session's 8 fake devices must not leak in).
    return [*local, "--cpu_devices_per_process=1", "--grace_s=30", "--", *train]


def _metrics_step(workdir) -> int:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return 0
    lines = path.read_text().splitlines()
    return json.loads(lines[-1])["step"] if lines else 0


def test_two_processes_stop_together_resume_and_match_one_process(
    tmp_path, omniglot_images, omniglot_dir, omniglot_tfds_dir
):
    workdir = tmp_path / "two"
    env = {"XLA_FLAGS": QUICK_COMPILE}
    run = faults.Run(_launch_args(workdir, omniglot_dir, omniglot_tfds_dir, num_steps=400), env)
    pid_1 = int(run.wait_for(r"\[launch\] process 1: pid (\d+)").group(1))
    deadline = time.time() + TIMEOUT
    while _metrics_step(workdir) < 4:
        assert run.proc.poll() is None and time.time() < deadline, run.text[-3000:]
        time.sleep(0.05)
    # A third process on the workdir (the same command in another terminal) is refused while
    # both are held still; then they go on.
    pid_0 = int(run.wait_for(r"\[launch\] process 0: pid (\d+)").group(1))
    for pid in (pid_0, pid_1):
        os.kill(pid, signal.SIGSTOP)
    third = subprocess.run(
        _flags(workdir, omniglot_dir, omniglot_tfds_dir, **OVERRIDES, num_steps=400),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={**os.environ, "XLA_FLAGS": QUICK_COMPILE},
    )
    for pid in (pid_0, pid_1):
        os.kill(pid, signal.SIGCONT)
    assert third.returncode == 2, third.stderr[-3000:]
    assert f"in use by another run: process {pid_0} on " in third.stderr
    assert "(process 0 of 2)" in third.stderr
    # Only process 1 is told (a TPU host under maintenance): process 0 must learn it too.
    os.kill(pid_1, signal.SIGTERM)
    assert run.finish() == 0, run.text[-3000:]
    saved = {
        int(m.group(1)): int(m.group(2))
        for m in re.finditer(r"\[(\d)\] .*Stop requested: saved step (\d+)", run.text)
    }
    assert set(saved) == {0, 1}, run.text[-3000:]
    assert saved[0] == saved[1], saved  # every process saved the same step
    stopped = saved[0]
    assert 4 <= stopped < 400
    assert (workdir / "checkpoints" / str(stopped)).is_dir()
    assert "[launch] exit codes: [0, 0]" in run.text

    resumed = faults.Run(
        _launch_args(workdir, omniglot_dir, omniglot_tfds_dir, num_steps=stopped + 4), env
    )
    assert resumed.finish() == 0, resumed.text[-3000:]
    assert re.search(rf"\[0\] .*Resumed from .* at step {stopped}", resumed.text)
    assert re.search(rf"\[1\] .*Resumed from .* at step {stopped}", resumed.text)

    # The same run in one process with two CPU devices: a mesh of the same shape.
    reference = tmp_path / "one"
    one = subprocess.run(
        _flags(reference, omniglot_dir, omniglot_tfds_dir, **OVERRIDES, num_steps=stopped + 4),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={**os.environ, "XLA_FLAGS": TWO_DEVICES},
    )
    assert one.returncode == 0, one.stderr[-3000:]

    # Bit for bit: the processes add the same two per-device gradients the single process adds.
    expected = checkpoint.final_state(str(reference))["params"]
    actual = checkpoint.final_state(str(workdir))["params"]
    jax.tree_util.tree_map(np.testing.assert_array_equal, expected, actual)
    one_results = json.loads((reference / "results.json").read_text())["test"]
    two_results = json.loads((workdir / "results.json").read_text())["test"]
    assert one_results == two_results  # evaluation saw every example once, on both


# Sinusoid MAML, small: every process samples the whole meta-batch from (seed, step) and keeps
# its rows, so two processes must compute what one process with two devices computes.
META_OVERRIDES = {
    "meta.meta_batch": 4,
    "log_every": 1,
    "checkpoint.every": 3,
    "optimizer.schedule": "constant",
    "baseline.joint": False,
    "eval.episodes": 8,
    "eval.batch": 4,
    "eval.inner_steps": 2,
    "eval.queries": 10,
}


def test_two_processes_meta_train_save_resume_and_match_one_process(tmp_path):
    def command(workdir, num_steps, launcher=()):
        overrides = {**META_OVERRIDES, "num_steps": num_steps}
        return faults.train_command(workdir, overrides, "configs/sinusoid_maml.py", launcher)

    two = tmp_path / "two"
    local = [sys.executable, "-m", "launch.local", "--num_processes=2"]
    launcher = [*local, "--cpu_devices_per_process=1", "--grace_s=30", "--"]
    env = {"XLA_FLAGS": QUICK_COMPILE}
    first = faults.Run(command(two, 3, launcher), env)
    assert first.finish(TIMEOUT) == 0, first.text[-3000:]
    assert (two / "checkpoints" / "3").is_dir()
    # The same command with a longer run restores step 3 on both processes and goes on.
    resumed = faults.Run(command(two, 6, launcher), env)
    assert resumed.finish(TIMEOUT) == 0, resumed.text[-3000:]
    assert re.search(r"\[0\] .*Resumed from .* at step 3", resumed.text), resumed.text[-3000:]
    assert re.search(r"\[1\] .*Resumed from .* at step 3", resumed.text), resumed.text[-3000:]

    one = tmp_path / "one"
    reference = subprocess.run(
        command(one, 6),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={**os.environ, "XLA_FLAGS": TWO_DEVICES},
    )
    assert reference.returncode == 0, reference.stderr[-3000:]

    expected = checkpoint.read_on_host(str(one / "checkpoints"))
    actual = checkpoint.read_on_host(str(two / "checkpoints"))
    assert int(actual["step"]) == int(expected["step"]) == 6
    jax.tree_util.tree_map(np.testing.assert_array_equal, expected["params"], actual["params"])
    one_results = json.loads((one / "results.json").read_text())["test"]
    two_results = json.loads((two / "results.json").read_text())["test"]
    assert one_results == two_results  # the same 8 test episodes, split over the processes


def test_two_processes_stream_image_folders_as_one_process_does(tmp_path):
    """Two processes streaming image folders (each decodes only its rows of a batch, see
    test_image_folder) train what one process with two devices trains, and evaluate every test
    image once."""
    from tests.own_data import write_tree

    roots = []
    for seed, (task, classes) in enumerate({"shapes": 2, "letters": 3}.items()):
        roots.append(str(tmp_path / "data" / task))
        write_tree(roots[-1], {f"c{i}": 10 for i in range(classes)}, seed)
    overrides = {
        "num_steps": 4,
        "batch_size": 8,
        "eval_batch_size": 8,
        "log_every": 1,
        "data.image_size": 16,
        "model.conv4.filters": 8,
        "optimizer.schedule": "constant",
        "input.threads": 2,
    }
    config = f"configs/image_folder_mtl.py:{','.join(roots)}"
    local = [sys.executable, "-m", "launch.local", "--num_processes=2"]
    launcher = [*local, "--cpu_devices_per_process=1", "--grace_s=30", "--"]
    two = faults.Run(faults.train_command(tmp_path / "two", overrides, config, launcher),
                     {"XLA_FLAGS": QUICK_COMPILE})  # fmt: skip
    assert two.finish(TIMEOUT) == 0, two.text[-3000:]
    one = subprocess.run(
        faults.train_command(tmp_path / "one", overrides, config),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={**os.environ, "XLA_FLAGS": TWO_DEVICES},
    )
    assert one.returncode == 0, one.stderr[-3000:]
    expected = checkpoint.final_state(str(tmp_path / "one"))["params"]
    actual = checkpoint.final_state(str(tmp_path / "two"))["params"]
    jax.tree_util.tree_map(np.testing.assert_array_equal, expected, actual)
    one_results = json.loads((tmp_path / "one" / "results.json").read_text())["test"]
    two_results = json.loads((tmp_path / "two" / "results.json").read_text())["test"]
    assert one_results == two_results
    assert one_results["letters"]["count"] == 3 * 2  # 20% of 10 images of each of 3 classes
