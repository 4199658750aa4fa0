"""Training loops, one file per kind of run; `config.trainer` picks one by name."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from mtl.errors import unknown_name

# trainer name -> "module:function"; imported on use so a run loads only its own loop.
TRAINERS: dict[str, str] = {
    "multitask": "mtl.train.multitask:train_and_evaluate",
    "finetune": "mtl.train.finetune:train_and_evaluate",
    "meta": "mtl.train.meta:train_and_evaluate",
    "affinity": "mtl.train.affinity:train_and_evaluate",
    "distill": "mtl.train.distill:train_and_evaluate",
    "sequential": "mtl.train.sequential:train_and_evaluate",
    "dann": "mtl.train.dann:train_and_evaluate",
}


def get_trainer(name: str) -> Callable:
    """The `train_and_evaluate(config, workdir)` function of trainer `name`."""
    if name not in TRAINERS:
        raise unknown_name("trainer", name, TRAINERS, field="trainer")
    module, function = TRAINERS[name].split(":")
    return getattr(importlib.import_module(module), function)
