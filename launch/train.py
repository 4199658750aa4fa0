"""Trains the model a config describes; the same command resumes an interrupted run.

    python -m launch.train --config=configs/omniglot_mtl.py --workdir=/tmp/omniglot_mtl \
        --config.num_steps=2000 --config.weighting.name=uncertainty

Any config field can be overridden with `--config.<field>=<value>`. The workdir receives
checkpoints, metrics.jsonl, TensorBoard events, config.json and results.json.

The same command runs on every process of a multi-host run (`launch/local.py`,
`launch/tpu_pod.py`, `launch/slurm.sbatch`); how the processes find each other comes from the
flags below or the environment (see `mtl/distributed.py`).
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from mtl import distributed, entry, preemption, workdir_lock
from mtl.errors import ConfigError, DataError, unknown_field

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, results.")
flags.mark_flags_as_required(["config", "workdir"])
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed",
    "auto",
    distributed.MODES,
    "auto: join a multi-process run if the flags below, $JAX_COORDINATOR_ADDRESS, SLURM or a "
    "TPU VM say so; on: always call jax.distributed.initialize; off: one process.",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 (default $JAX_COORDINATOR_ADDRESS)."
)
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Processes in the run (default $JAX_NUM_PROCESSES)."
)
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "This process's index, 0-based (default $JAX_PROCESS_ID)."
)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    from mtl.runs import get_trainer

    config = _CONFIG.value
    logging.info("Config:\n%s", config)
    try:
        # Before anything else touches JAX: the backend must see the other processes' devices.
        distributed.initialize(
            distributed.plan(
                _DISTRIBUTED.value, _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value
            )
        )
        # The whole run holds the workdir: training, final evaluation and results files.
        with workdir_lock.hold(_WORKDIR.value):
            get_trainer(config.trainer)(config, _WORKDIR.value)
    except KeyboardInterrupt:
        # Ctrl-C outside the training steps (while loading data, compiling or evaluating at
        # the end): the steps' own handler saves and exits 0; here nothing is left to save.
        print(
            "Interrupted outside the training steps; the newest checkpoint in the workdir is "
            "kept and the same command resumes from it.",
            file=sys.stderr,
        )
        sys.exit(preemption.INTERRUPT_EXIT_CODE)
    except (ConfigError, DataError, FloatingPointError) as e:
        # One clear message, no stack trace: these are problems with the input, not bugs.
        logging.error("%s: %s", type(e).__name__, e)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, with one line instead of a traceback for a bad `--config.` override."""
    try:
        return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError) as e:
        print(f"error: {override_error(argv, e)}", file=sys.stderr)
        sys.exit(2)


def override_error(argv: list[str], error: Exception) -> str:
    """Names the mistyped field of a `--config.<field>` override and the closest real one.

    config_flags raises an AttributeError deep in ml_collections for an unknown field, before
    the config is stored; so the config file is loaded again here to name the fields.
    """
    config_arg = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    overrides = [a[len("--config.") :].split("=", 1)[0] for a in argv if a.startswith("--config.")]
    if config_arg is not None and overrides:
        try:
            config = flags.FLAGS["config"].parser.parse(config_arg)
        except Exception:  # noqa: BLE001 - the config itself is broken: report the original
            config = None
        for field in overrides if config is not None else ():
            message = unknown_field(config, field)
            if message:
                return message
    text = str(error).strip()
    if isinstance(error, KeyError | AttributeError) and text[:1] in "'\"":
        text = text[1:-1]  # str() of a KeyError quotes its message
    return text.splitlines()[0]


if __name__ == "__main__":
    entry.run(main, flags_parser=parse_flags)
