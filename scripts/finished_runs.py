"""Finished fine-tuning runs, read back: what the SentEval results scripts build tables from.

No flags here, so several scripts (and tests) can share it.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Callable

from absl import logging


def run_once(workdir: str, train: Callable, config, run_missing: bool = True) -> dict | None:
    """`{"test": {task: metrics}, "info": finetune.json}` of the run in `workdir`.

    A run that has not finished is trained first with `train(config, workdir)` (a fine-tuning
    trainer returning an `mtl.train.Result`, which writes both files), unless `run_missing` is
    False: then None. A run stopped by SIGTERM exits the process (status 0): the same command
    resumes it.
    """
    results, info = os.path.join(workdir, "results.json"), os.path.join(workdir, "finetune.json")
    if not (os.path.isfile(results) and os.path.isfile(info)):
        if not run_missing:
            return None
        logging.info("Run %s.", workdir)
        if train(config, workdir).stopped:
            raise SystemExit(0)
    with open(results) as f, open(info) as g:
        return {"test": json.load(f)["test"], "info": json.load(g)}


def percent(values: list[float]) -> str:
    """Accuracies as percent: the value for one run, mean ± standard deviation for several."""
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"
