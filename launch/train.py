"""Trains the model a config describes; the same command resumes an interrupted run.

    python -m launch.train --config=configs/omniglot_mtl.py --workdir=/tmp/omniglot_mtl \
        --config.num_steps=2000 --config.weighting.name=uncertainty

Any config field can be overridden with `--config.<field>=<value>`. The workdir receives
checkpoints, metrics.jsonl, TensorBoard events, config.json and results.json.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from mtl.errors import ConfigError, DataError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, results.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from mtl.logs import quiet_library_logs
    from mtl.train import get_trainer

    quiet_library_logs()

    config = _CONFIG.value
    logging.info("Config:\n%s", config)
    try:
        get_trainer(config.trainer)(config, _WORKDIR.value)
    except (ConfigError, DataError, FloatingPointError) as e:
        # One clear message, no stack trace: these are problems with the input, not bugs.
        logging.error("%s: %s", type(e).__name__, e)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
