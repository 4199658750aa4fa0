"""The multi-task training loop: `train_and_evaluate(config, workdir)`.

Order of work, so that bad input fails fast: every name in the config is checked, then the
data is loaded and its labels checked against the tasks, and only then is anything built or
compiled. A workdir that already holds checkpoints is resumed from the newest one.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import ml_collections

from mtl import checkpoint, distributed, optim
from mtl.data import arrays, sources
from mtl.errors import ConfigError, unknown_name
from mtl.logs import MetricsWriter
from mtl.models import TRUNKS, build_model
from mtl.tasks import Task, check_labels, tasks_from_config
from mtl.train import loop
from mtl.train.multitask_step import make_steps
from mtl.weighting import get_weighting

# Config fields that define what the checkpoints in a workdir hold.
MODEL_KEYS = ("model", "tasks", "weighting", "optimizer")
LAYOUTS = ("mixed", "per_task")


def validate(config: ml_collections.ConfigDict) -> tuple[tuple[Task, ...], Any]:
    """Checks every name in the config; returns the tasks and the weighting method."""
    tasks = tasks_from_config(config.tasks)
    trunk = config.model.trunk
    TRUNKS.get(trunk, field="model.trunk")
    TRUNKS.options_from(trunk, config.model.get(trunk), field=f"model.{trunk}")
    weighting = get_weighting(config.weighting.name, config.weighting.get(config.weighting.name))
    optim.make_optimizer(config.optimizer, config.num_steps)
    sources.SOURCES.get(config.data.name, field="data.name")
    check_batch_layout(config, tasks)
    return tasks, weighting


def check_batch_layout(config: ml_collections.ConfigDict, tasks) -> None:
    """`batch_layout` is "mixed" (rows drawn from all examples) or "per_task" (one equal group
    of rows per task: see `make_steps(per_task_batch=...)`)."""
    layout = loop.batch_layout(config)
    if layout not in LAYOUTS:
        raise unknown_name("batch layout", layout, LAYOUTS, field="batch_layout")
    if layout == "per_task" and config.batch_size % len(tasks):
        raise ConfigError(
            f"batch_layout='per_task' splits the batch into one equal group per task, but "
            f"batch_size={config.batch_size} is not a multiple of the {len(tasks)} tasks. "
            f"Set --config.batch_size to a multiple of {len(tasks)}."
        )


def load_data(config, tasks) -> sources.MultiTaskData:
    """The configured data set, restricted to the tasks' label fields and checked against them."""
    # Process 0 prepares the data set first: the others then read what it prepared.
    data = distributed.first_on_process_0(lambda: sources.load(config.data), "load_data")
    for split, ds in data._asdict().items():
        check_labels(tasks, ds["labels"], ds["masks"], split)
    fields = sorted({t.label for t in tasks})
    return sources.MultiTaskData(*(arrays.select_fields(ds, fields) for ds in data))


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, steps_fn=make_steps, data=None
) -> dict[str, dict]:
    """Trains (or resumes) a multi-task model and returns per-task test metrics.

    `steps_fn(model, tasks, optimizer, weighting, seed) -> Steps` builds the pure steps; other
    trainers pass a wrapper of `make_steps` (e.g. `mtl.train.affinity` adds an accumulator).
    `data`: what `load_data(config, tasks)` returns, when the caller has loaded it already.
    Returns {} when a stop was requested (the state is saved; the same command resumes).
    """
    tasks, weighting = validate(config)
    if loop.batch_layout(config) == "per_task":
        if steps_fn is not make_steps:
            raise ConfigError(
                f"batch_layout='per_task' is supported by trainer='multitask' only, not "
                f"{config.trainer!r}: set --config.batch_layout=mixed."
            )
        steps_fn = functools.partial(make_steps, per_task_batch=True)
    data = load_data(config, tasks) if data is None else data
    mesh, rules = loop.mesh_and_rules(config)
    checkpoint.check_config(workdir, config, MODEL_KEYS)

    model = build_model(config.model, tasks, arrays.input_shape(data.train), config.seed)
    optimizer = optim.make_optimizer(config.optimizer, config.num_steps)
    compiled = loop.compile_steps(
        steps_fn(model, tasks, optimizer, weighting, config.seed), mesh, rules
    )
    manager = checkpoint.make_manager(
        os.path.join(workdir, "checkpoints"),
        every=config.checkpoint.every,
        keep=config.checkpoint.keep,
    )
    writer = None
    try:
        state = loop.restore_or_init(manager, compiled, workdir, config)
        writer = MetricsWriter(workdir)  # after the restore: a refused one writes nothing
        trained = loop.train(config, tasks, compiled, state, data.train, manager, writer)
        if trained.stopped:
            return {}
        step = int(trained.state["step"])
        results = loop.evaluate(
            compiled.eval_step, trained.state, data.test, config.eval_batch_size,
            compiled.data_sharding,
        )  # fmt: skip
        loop.report(results, workdir, writer, step)
        return results
    finally:
        manager.wait_until_finished()
        manager.close()
        if writer is not None:
            writer.close()


def final_params(workdir: str) -> Any:
    """The parameters of the newest checkpoint in `workdir` (host arrays), for inspection."""
    return loop.final_state(workdir)["params"]
