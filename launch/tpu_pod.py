"""Runs one command on every worker of a Cloud TPU pod slice.

    python -m launch.tpu_pod --tpu=my-v4-32 --zone=us-central2-b -- \
        python -m launch.train --config=configs/omniglot_mtl.py --workdir=gs://my-bucket/run

Three steps, each a plain command (`--dry_run` prints them):

1. pack this checkout (without .git, .venv and caches) into a tarball;
2. copy it to every worker: `gcloud compute tpus tpu-vm scp ... --worker=all`;
3. on every worker at once: unpack into `--code_dir`, run `--setup` (creates a venv with
   jax[tpu]; quick when already done), then the command:
   `gcloud compute tpus tpu-vm ssh ... --worker=all --command=...`.

Every worker runs the very same command; the workers find each other through the TPU metadata
(`mtl/distributed.py`), so the command needs no process flags. The workdir must be a path all
workers share (a `gs://` bucket): Orbax writes one checkpoint from all of them. Preemption or
maintenance sends SIGTERM; the run saves and exits 0, and the same launch resumes it.
`--detach` keeps the run going after this command (and the ssh sessions) end; its output is
then in `<code_dir>/run.log` on each worker.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Sequence

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SETUP = (
    "[ -x .venv/bin/python ] || python3 -m venv .venv; "
    ".venv/bin/pip install -q -e . 'jax[tpu]>=0.10.2,<0.11'"
)
EXCLUDES = (".git", ".venv", "__pycache__", "*.egg-info", ".pytest_cache", ".ruff_cache")

_TPU = flags.DEFINE_string("tpu", None, "Name of the TPU VM (pod slice).")
_ZONE = flags.DEFINE_string("zone", None, "Its zone, e.g. us-central2-b.")
_PROJECT = flags.DEFINE_string("project", None, "GCP project (default: gcloud's).")
_CODE_DIR = flags.DEFINE_string("code_dir", "mtl", "Where the code goes on each worker ($HOME).")
_SETUP = flags.DEFINE_string("setup", DEFAULT_SETUP, "Shell run in code_dir before the command.")
_DETACH = flags.DEFINE_bool("detach", False, "Run in the background (nohup) on the workers.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the commands; run nothing.")
flags.mark_flags_as_required(["tpu", "zone"])


def pack_command(repo: str, tarball: str) -> list[str]:
    """tar of the checkout without version control, environments and caches."""
    excludes = [f"--exclude={pattern}" for pattern in EXCLUDES]
    return ["tar", "-czf", tarball, *excludes, "-C", repo, "."]


def remote_script(command: Sequence[str], code_dir: str, setup: str, detach: bool) -> str:
    """What each worker runs: unpack, set up, then the command inside the venv."""
    run = f". .venv/bin/activate && {shlex.join(command)}"
    if detach:
        run = f"nohup bash -c {shlex.quote(run)} > run.log 2>&1 < /dev/null &"
    return " && ".join(
        [
            f"mkdir -p {code_dir}",
            f"tar -xzf mtl-code.tar.gz -C {code_dir}",
            f"cd {code_dir}",
            f"({setup})",
            run,
        ]
    )


def commands(
    command: Sequence[str],
    *,
    tpu: str,
    zone: str,
    project: str | None = None,
    code_dir: str = "mtl",
    setup: str = DEFAULT_SETUP,
    detach: bool = False,
    tarball: str = "/tmp/mtl-code.tar.gz",
    repo: str = REPO,
) -> list[list[str]]:
    """The three commands: pack, copy to all workers, run on all workers."""
    where = [f"--zone={zone}"] + ([f"--project={project}"] if project else [])
    gcloud = ["gcloud", "compute", "tpus", "tpu-vm"]
    return [
        pack_command(repo, tarball),
        [*gcloud, "scp", tarball, f"{tpu}:mtl-code.tar.gz", "--worker=all", *where],
        [
            *gcloud,
            "ssh",
            tpu,
            "--worker=all",
            *where,
            f"--command={remote_script(command, code_dir, setup, detach)}",
        ],
    ]


def main(argv: list[str]) -> None:
    command = argv[1:]
    if not command:
        raise app.UsageError("Give the command after `--`, e.g. -- python -m launch.train ...")
    with tempfile.TemporaryDirectory() as tmp:
        steps = commands(
            command,
            tpu=_TPU.value,
            zone=_ZONE.value,
            project=_PROJECT.value,
            code_dir=_CODE_DIR.value,
            setup=_SETUP.value,
            detach=_DETACH.value,
            tarball=os.path.join(tmp, "mtl-code.tar.gz"),
        )
        for step in steps:
            print(shlex.join(step), flush=True)
            if not _DRY_RUN.value:
                code = subprocess.call(step)
                if code:
                    sys.exit(code)


if __name__ == "__main__":
    app.run(main)
