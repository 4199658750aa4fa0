"""Finished fine-tuning runs, read back: what the SentEval results scripts build tables from.

No flags here, so several scripts (and tests) can share it.
"""

from __future__ import annotations

import json
import os
import statistics
import time
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


def timed_summary(workdir: str, config, **extra) -> dict:
    """`{"metrics", "wall_seconds", **extra}` of the run of `config` in `workdir`: its test
    metrics (`meta_test` for meta-learning) and wall time, saved as `summary.json` and read
    back from there when the run has finished before. A run stopped by SIGTERM exits the
    process: the same command resumes it."""
    from mtl.runs import get_trainer

    summary = os.path.join(workdir, "summary.json")
    if os.path.exists(summary):
        with open(summary) as f:
            return json.load(f)
    start = time.time()
    result = get_trainer(config.trainer)(config, workdir)
    if result.stopped:
        raise SystemExit(f"{workdir} was stopped; run the script again to resume it.")
    metrics = result.metrics.get("meta_test") or result.metrics["test"]
    values = {"metrics": metrics, "wall_seconds": time.time() - start, **extra}
    with open(summary, "w") as f:
        json.dump(values, f, indent=2, default=str)
    return values


def percent(values: list[float]) -> str:
    """Accuracies as percent: the value for one run, mean ± standard deviation for several."""
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"
