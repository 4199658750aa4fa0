"""The multi-task training loop: `train_and_evaluate(config, workdir)`.

Order of work, so that bad input fails fast: every name in the config is checked, then the
data is loaded and its labels checked against the tasks, and only then is anything built or
compiled. A workdir that already holds checkpoints is resumed from the newest one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from mtl import checkpoint, optim, parallel, preemption
from mtl.data import arrays, sources
from mtl.logs import MetricsWriter, Progress
from mtl.models import TRUNKS, build_model
from mtl.tasks import Task, check_labels, tasks_from_config
from mtl.train.multitask_step import make_steps
from mtl.weighting import get_weighting

# Config fields that define what the checkpoints in a workdir hold.
MODEL_KEYS = ("model", "tasks", "weighting", "optimizer")


def validate(config: ml_collections.ConfigDict) -> tuple[tuple[Task, ...], Any]:
    """Checks every name in the config; returns the tasks and the weighting method."""
    tasks = tasks_from_config(config.tasks)
    trunk = config.model.trunk
    TRUNKS.get(trunk, field="model.trunk")
    TRUNKS.options_from(trunk, config.model.get(trunk), field=f"model.{trunk}")
    weighting = get_weighting(config.weighting.name, config.weighting.get(config.weighting.name))
    optim.make_optimizer(config.optimizer, config.num_steps)
    sources.SOURCES.get(config.data.name, field="data.name")
    return tasks, weighting


def load_data(config, tasks) -> sources.MultiTaskData:
    """The configured data set, restricted to the tasks' label fields and checked against them."""
    data = sources.load(config.data)
    for split, ds in data._asdict().items():
        check_labels(tasks, ds["labels"], ds["masks"], split)
    fields = sorted({t.label for t in tasks})
    return sources.MultiTaskData(*(arrays.select_fields(ds, fields) for ds in data))


def evaluate(eval_step, state, data: arrays.ArrayDataset, batch_size: int, sharding) -> dict:
    """Per-task metric means over a whole data set."""
    totals: dict[str, dict[str, float]] = {}
    rows = parallel.process_rows(batch_size)
    for batch in arrays.eval_batches(data, batch_size):
        local = jax.tree_util.tree_map(lambda a: a[rows], batch)
        sums = jax.device_get(eval_step(state, parallel.to_global(local, sharding)))
        for task, values in sums.items():
            acc = totals.setdefault(task, {})
            for k, v in values.items():
                acc[k] = acc.get(k, 0.0) + float(v)
    return {
        task: {k: v / max(acc["count"], 1.0) for k, v in acc.items() if k != "count"}
        | {"count": acc["count"]}
        for task, acc in totals.items()
    }


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, steps_fn=make_steps
) -> dict[str, dict]:
    """Trains (or resumes) a multi-task model and returns per-task test metrics.

    `steps_fn(model, tasks, optimizer, weighting, seed) -> Steps` builds the pure steps; other
    trainers pass a wrapper of `make_steps` (e.g. `mtl.train.affinity` adds an accumulator).
    """
    tasks, weighting = validate(config)
    data = load_data(config, tasks)
    mesh = parallel.make_mesh(config.get("mesh"))
    parallel.check_batch_size(config.batch_size, mesh)
    parallel.check_batch_size(config.eval_batch_size, mesh, field="eval_batch_size")
    checkpoint.guard_config(workdir, config, MODEL_KEYS)

    input_shape = data.train["inputs"].shape[1:]
    model = build_model(config.model, tasks, input_shape, config.seed)
    optimizer = optim.make_optimizer(config.optimizer, config.num_steps)
    steps = steps_fn(model, tasks, optimizer, weighting, config.seed)

    state_sharding = parallel.replicated(mesh)
    data_sharding = parallel.batch_sharding(mesh)
    init = jax.jit(steps.init, out_shardings=state_sharding)
    train_step = jax.jit(
        steps.train_step,
        in_shardings=(state_sharding, data_sharding),
        out_shardings=(state_sharding, state_sharding),
        donate_argnums=0,
    )
    eval_step = jax.jit(steps.eval_step, in_shardings=(state_sharding, data_sharding))

    manager = checkpoint.make_manager(
        os.path.join(workdir, "checkpoints"),
        every=config.checkpoint.every,
        keep=config.checkpoint.keep,
    )
    state = init()
    restored = checkpoint.restore_latest(manager, state)
    if restored is not None:
        state = restored
    first_step = int(state["step"])
    if restored is not None:
        logging.info("Resumed from %s at step %d.", manager.directory, first_step)

    writer = MetricsWriter(workdir)
    progress = Progress(config.num_steps, first_step)
    preemption.install_sigterm_handler()
    train_rows = parallel.process_rows(config.batch_size)
    n_train = arrays.num_examples(data.train)
    step = first_step
    try:
        while step < config.num_steps:
            index = arrays.batch_indices(config.seed, step, n_train, config.batch_size)
            batch = arrays.take(data.train, index[train_rows])
            state, metrics = train_step(state, parallel.to_global(batch, data_sharding))
            step += 1
            stop = preemption.stop_requested()  # read once: the signal may land at any time
            log_due = step % config.log_every == 0 or step == config.num_steps
            save_due = manager.should_save(step) or stop
            if log_due or save_due:
                _check_finite(jax.device_get(state["nonfinite"]), tasks, manager.directory)
            if log_due:
                scalars = {f"train/{k}": float(v) for k, v in jax.device_get(metrics).items()}
                rate = progress.rate(step)
                writer.write(step, scalars | {"steps_per_sec": rate})
                losses = {t.name: scalars[f"train/loss/{t.name}"] for t in tasks}
                progress.log(progress.line(step, rate, losses))
            if save_due:
                checkpoint.save(manager, step, state, force=stop)
            if stop:
                manager.wait_until_finished()
                logging.info("Stop requested: saved step %d in %s; exiting.", step, workdir)
                return {}
        checkpoint.save(manager, step, state, force=True)
        results = evaluate(eval_step, state, data.test, config.eval_batch_size, data_sharding)
        _report(results, workdir, writer, step)
        return results
    finally:
        manager.wait_until_finished()
        manager.close()
        writer.close()


def _check_finite(nonfinite, tasks, checkpoint_dir: str) -> None:
    """Raises if any step so far had a non-finite loss or update (see `multitask_step`)."""
    step = int(nonfinite["step"])
    if step < 0:
        return
    bad = [t.name for t, flag in zip(tasks, nonfinite["tasks"], strict=True) if flag]
    what = f"loss of task(s) {', '.join(bad)}" if bad else "parameter update"
    raise FloatingPointError(
        f"Non-finite {what} at step {step}. Stopped without saving it; the newest "
        f"good checkpoint in {checkpoint_dir} is kept. Try a lower learning rate or gradient "
        "clipping (--config.optimizer.grad_clip_norm)."
    )


def _report(results: Mapping[str, Mapping[str, float]], workdir: str, writer, step: int) -> None:
    """Logs a per-task table of test metrics and writes them to `workdir/results.json`."""
    lines = ["Test metrics:"]
    for task, metrics in results.items():
        shown = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k != "count")
        lines.append(f"  {task:<24s} {shown} (n={int(metrics['count'])})")
    logging.info("\n".join(lines))
    writer.write(
        step,
        {
            f"test/{m}/{task}": v
            for task, metrics in results.items()
            for m, v in metrics.items()
            if m != "count"
        },
    )
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump({"step": step, "test": results}, f, indent=2)


def final_params(workdir: str) -> Any:
    """The parameters of the newest checkpoint in `workdir` (host arrays), for inspection."""
    return final_state(workdir)["params"]


def final_state(workdir: str) -> Any:
    """The whole train state of the newest checkpoint in `workdir` (host arrays)."""
    manager = checkpoint.make_manager(os.path.join(workdir, "checkpoints"), every=1, keep=1)
    try:
        # Without a template Orbax needs to be told the item's handler.
        restored = manager.restore(manager.latest_step(), args=ocp.args.StandardRestore())
    finally:
        manager.close()
    host = lambda a: a if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key) else np.asarray(a)  # noqa: E731
    return jax.tree_util.tree_map(host, restored)
