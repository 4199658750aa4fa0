"""Finished fine-tuning runs, read back: what the SentEval results scripts build tables from.

No flags here, so several scripts (and tests) can share it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

from absl import logging


def run_once(workdir: str, train: Callable, config, run_missing: bool = True) -> dict | None:
    """`{"test": {task: metrics}, "info": finetune.json}` of the run in `workdir`.

    A run that has not finished is trained first with `train(config, workdir)` (a fine-tuning
    trainer, which writes both files), unless `run_missing` is False: then None.
    """
    results, info = os.path.join(workdir, "results.json"), os.path.join(workdir, "finetune.json")
    if not (os.path.isfile(results) and os.path.isfile(info)):
        if not run_missing:
            return None
        logging.info("Run %s.", workdir)
        train(config, workdir)
    with open(results) as f, open(info) as g:
        return {"test": json.load(f)["test"], "info": json.load(g)}
