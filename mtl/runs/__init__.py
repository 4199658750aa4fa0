"""The kinds of run: each turns a config into an `Experiment` (`mtl.train`) or composes
several, and `config.trainer` picks one by name.

    from mtl.runs import get_trainer
    result = get_trainer(config.trainer)(config, workdir)   # -> mtl.train.Result

| trainer | module | what it runs |
| --- | --- | --- |
| `supervised`, `multitask`, `finetune` | `supervised` | trunk + heads; optional fine-tuning |
| `meta` | `meta` | a meta-learner on episodes (and the joint baseline) |
| `affinity` | `task_affinity` | supervised, with the lookahead task affinity in `extras` |
| `distill` | `distillation` | supervised student, a finished run as the teacher |
| `sequential` | `sequential` | supervised phases, trunk passed on, optional EWC |
| `dann` | `domain_adversarial` | supervised with a gradient-reversed domain head |
| `progressive` | `progressive_networks` | a new column per task, earlier ones frozen |
"""

from __future__ import annotations

from collections.abc import Callable

from mtl.registry import Registry

# Imported on use, so a run loads only its own code.
TRAINERS: Registry = Registry("trainer")
for _name, _target in {
    "supervised": "mtl.runs.supervised:train",
    "multitask": "mtl.runs.supervised:train",
    "finetune": "mtl.runs.supervised:train",
    "meta": "mtl.runs.meta:train",
    "affinity": "mtl.runs.task_affinity:train",
    "distill": "mtl.runs.distillation:train",
    "sequential": "mtl.runs.sequential:train",
    "dann": "mtl.runs.domain_adversarial:train",
    "progressive": "mtl.runs.progressive_networks:train",
}.items():
    TRAINERS.register_lazy(_name, _target)


def get_trainer(name: str) -> Callable:
    """The `train(config, workdir) -> Result` function of trainer `name`."""
    return TRAINERS.get(name, field="trainer")
