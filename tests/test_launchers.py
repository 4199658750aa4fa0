"""Launchers print what they would run (`--dry_run` / DRY_RUN=1); start-up plans from the env."""

import os
import shlex
import subprocess
import sys

import pytest

from mtl import distributed
from mtl.errors import ConfigError
from scripts.faults import REPO

TRAIN = [
    "python",
    "-m",
    "launch.train",
    "--config=configs/omniglot_mtl.py",
    "--workdir=/runs/my run",  # a space: quoting must survive every layer
]


def _cli(args, env=None):
    env = {**os.environ, **(env or {})}
    result = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.splitlines()


def test_local_dry_run_prints_one_command_per_process():
    lines = _cli(
        [sys.executable, "-m", "launch.local", "--num_processes=3", "--port=4321"]
        + ["--cpu_devices_per_process=2", "--dry_run", "--", *TRAIN],
        env={"XLA_FLAGS": "--xla_cpu_foo=1 --xla_force_host_platform_device_count=8"},
    )
    assert len(lines) == 3
    for i, line in enumerate(lines):
        words = shlex.split(line)
        env = dict(w.split("=", 1) for w in words[:4])
        assert env == {
            "JAX_COORDINATOR_ADDRESS": "127.0.0.1:4321",
            "JAX_NUM_PROCESSES": "3",
            "JAX_PROCESS_ID": str(i),
            # the launcher's other XLA flags kept, its device count replaced
            "XLA_FLAGS": "--xla_cpu_foo=1 --xla_force_host_platform_device_count=2",
        }
        assert words[4:] == TRAIN


def test_local_gives_each_process_its_gpus():
    lines = _cli(
        [sys.executable, "-m", "launch.local", "--num_processes=2", "--host=10.0.0.1"]
        + ["--devices_per_process=4", "--dry_run", "--", *TRAIN],
        env={"XLA_FLAGS": ""},
    )
    envs = [dict(w.split("=", 1) for w in shlex.split(line)[:4]) for line in lines]
    assert [e["JAX_LOCAL_DEVICE_IDS"] for e in envs] == ["0,1,2,3", "4,5,6,7"]
    assert all(e["JAX_COORDINATOR_ADDRESS"].startswith("10.0.0.1:") for e in envs)


def test_tpu_pod_dry_run_copies_code_then_runs_the_command_on_all_workers():
    lines = _cli(
        [sys.executable, "-m", "launch.tpu_pod", "--tpu=pod-32", "--zone=us-central2-b"]
        + ["--project=proj", "--dry_run", "--", *TRAIN]
    )
    assert len(lines) == 3
    pack, copy, ssh = (shlex.split(line) for line in lines)
    assert pack[:2] == ["tar", "-czf"] and "--exclude=.venv" in pack
    assert pack[-3:] == ["-C", str(REPO), "."]
    tarball = pack[2]
    assert copy == [
        *["gcloud", "compute", "tpus", "tpu-vm", "scp", tarball, "pod-32:mtl-code.tar.gz"],
        *["--worker=all", "--zone=us-central2-b", "--project=proj"],
    ]
    assert ssh[:8] == [
        *["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod-32", "--worker=all"],
        "--zone=us-central2-b",
    ]
    remote = ssh[-1].removeprefix("--command=")
    steps = remote.split(" && ")
    assert steps[:3] == ["mkdir -p mtl", "tar -xzf mtl-code.tar.gz -C mtl", "cd mtl"]
    assert "jax[tpu]" in steps[3]
    # The very command given, quoted so that the worker's shell splits it back exactly.
    assert shlex.split(steps[-1]) == TRAIN


def test_tpu_pod_detach_keeps_the_run_after_ssh_ends():
    lines = _cli(
        [sys.executable, "-m", "launch.tpu_pod", "--tpu=t", "--zone=z", "--setup=true"]
        + ["--detach", "--dry_run", "--", *TRAIN]
    )
    script = shlex.split(lines[-1])[-1].removeprefix("--command=")
    run = script.split(" && ", 4)[-1]
    assert run.startswith("nohup bash -c ") and run.endswith("> run.log 2>&1 < /dev/null &")
    inner = shlex.split(run)[3]
    assert shlex.split(inner.split(" && ", 1)[1]) == TRAIN


def test_slurm_dry_run_prints_the_srun_line():
    lines = _cli(
        ["bash", "launch/slurm.sbatch", *TRAIN],
        env={"DRY_RUN": "1", "SLURM_JOB_NUM_NODES": "4", "SLURM_NTASKS_PER_NODE": "8"},
    )
    words = shlex.split(lines[-1])
    assert words[:5] == [
        "srun",
        "--nodes=4",
        "--ntasks-per-node=8",
        "--kill-on-bad-exit=1",
        "--label",
    ]
    assert words[5:7] == ["bash", "-c"] and "activate" in words[7]
    assert words[8:] == ["mtl", *TRAIN]
    # The preemption settings the README promises.
    header = (REPO / "launch" / "slurm.sbatch").read_text()
    assert "#SBATCH --signal=TERM@120" in header and "#SBATCH --requeue" in header


NO_CLUSTER: dict[str, str] = {}
SLURM = {
    "SLURM_JOB_ID": "77",
    "SLURM_STEP_NODELIST": "node[01-04]",
    "SLURM_NTASKS": "32",
    "SLURM_PROCID": "5",
    "SLURM_LOCALID": "5",
}


@pytest.mark.parametrize(
    "mode, flags, env, tpu, expected",
    [
        ("auto", {}, NO_CLUSTER, False, ("single", {})),
        (
            "auto",
            {"coordinator_address": "h:1", "num_processes": 2, "process_id": 1},
            NO_CLUSTER,
            False,
            ("explicit", {"coordinator_address": "h:1", "num_processes": 2, "process_id": 1}),
        ),
        (
            "auto",
            {},
            {"JAX_COORDINATOR_ADDRESS": "h:2", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"},
            False,
            ("explicit", {"coordinator_address": "h:2", "num_processes": 4, "process_id": 3}),
        ),
        # a flag beats the environment
        (
            "auto",
            {"process_id": 0},
            {"JAX_COORDINATOR_ADDRESS": "h:2", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"},
            False,
            ("explicit", {"coordinator_address": "h:2", "num_processes": 4, "process_id": 0}),
        ),
        ("auto", {}, SLURM, False, ("slurm", {})),
        ("auto", {}, {**SLURM, "SLURM_NTASKS": "1"}, False, ("single", {})),
        ("auto", {}, NO_CLUSTER, True, ("tpu", {})),
        ("on", {}, NO_CLUSTER, False, ("detect", {})),
        ("off", {}, SLURM, True, ("single", {})),
    ],
)
def test_plan(mode, flags, env, tpu, expected):
    assert tuple(distributed.plan(mode, env=env, tpu=tpu, **flags)) == expected


@pytest.mark.parametrize(
    "flags, env, message",
    [
        ({"process_id": 1}, {}, r"missing: --coordinator_address, --num_processes"),
        ({"coordinator_address": "h:1", "num_processes": 2, "process_id": 2}, {}, r"\[0, "),
        ({}, {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "two"}, r"must be an int"),
    ],
)
def test_plan_errors(flags, env, message):
    with pytest.raises(ConfigError, match=message):
        distributed.plan("auto", env=env, tpu=False, **flags)
