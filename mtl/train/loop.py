"""The parts every supervised loop shares: compile the steps, restore or start, train, evaluate.

`mtl.train.multitask` and `mtl.train.finetune` differ in how they build the model and the
optimizer; from the pure `Steps` on, they run the same code, here:

- `compile_steps`: jit with named shardings (the state replicated except where sharding rules
  split it, the batch split over `data`, the state donated);
- `restore_or_init`: the newest complete checkpoint, or a fresh state;
- `train`: the step loop with progress, metrics, periodic and preemption saves, and the
  non-finite check before any save;
- `evaluate` and `report`: per-task test metrics, logged and written to `results.json`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.sharding import Mesh, NamedSharding

from mtl import checkpoint, parallel, preemption, sharding
from mtl.data import arrays
from mtl.logs import MetricsWriter, Progress
from mtl.tasks import Task
from mtl.train.multitask_step import Steps

# A host-batch transform applied to the whole global batch before this process takes its rows.
Prepare = Callable[[arrays.ArrayDataset], arrays.ArrayDataset]


def mesh_and_rules(config: ml_collections.ConfigDict) -> tuple[Mesh, tuple[sharding.Rule, ...]]:
    """The configured mesh and sharding rules, checked against each other and the batch sizes."""
    mesh = parallel.make_mesh(config.get("mesh"))
    parallel.check_batch_size(config.batch_size, mesh)
    parallel.check_batch_size(config.eval_batch_size, mesh, field="eval_batch_size")
    rules = sharding.config_rules(config)
    sharding.check_rules(rules, mesh)
    return mesh, rules


@dataclasses.dataclass(frozen=True)
class Compiled:
    """The jitted steps and the shardings they were compiled for."""

    init: Callable[[], Any]
    train_step: Callable[[Any, Any], tuple[Any, Any]]
    eval_step: Callable[[Any, Any], Any]
    data_sharding: NamedSharding


def compile_steps(steps: Steps, mesh: Mesh, rules: Sequence[Any]) -> Compiled:
    """Jits `steps` over `mesh`; `rules` (see `mtl.sharding`) shard the state, else replicated."""
    state_shapes = jax.eval_shape(steps.init)
    state_sharding = sharding.tree_shardings(state_shapes, rules, mesh)
    if rules:
        logging.info("%s", sharding.summary(state_shapes, state_sharding))
    data_sharding = parallel.batch_sharding(mesh)
    train_step = jax.jit(
        steps.train_step,
        in_shardings=(state_sharding, data_sharding),
        out_shardings=(state_sharding, parallel.replicated(mesh)),
        donate_argnums=0,
    )
    return Compiled(
        init=jax.jit(steps.init, out_shardings=state_sharding),
        train_step=train_step,
        eval_step=jax.jit(steps.eval_step, in_shardings=(state_sharding, data_sharding)),
        data_sharding=data_sharding,
    )


def restore_or_init(
    manager: ocp.CheckpointManager,
    compiled: Compiled,
    workdir: str,
    config: ml_collections.ConfigDict,
) -> Any:
    """The newest complete checkpoint's state, else a fresh one; records the config after.

    The caller closes `manager` whatever happens (a refused restore too: Orbax's background
    threads would otherwise keep the process alive).
    """
    state = compiled.init()
    restored = checkpoint.restore_latest(manager, state)
    if restored is not None:
        state = restored
        logging.info("Resumed from %s at step %d.", manager.directory, int(state["step"]))
    checkpoint.record_config(workdir, config)  # only now: a refused restore leaves no trace
    return state


@dataclasses.dataclass(frozen=True)
class Trained:
    """What `train` ends with: the state, whether a stop was requested, the seconds it took."""

    state: Any
    stopped: bool
    seconds: float


def batch_layout(config: ml_collections.ConfigDict) -> str:
    """The configured `batch_layout`: "mixed" (the default) or "per_task"."""
    return config.get("batch_layout", "mixed")


def batch_sampler(
    config: ml_collections.ConfigDict, tasks: Sequence[Task], data: arrays.ArrayDataset
) -> Callable[[int], np.ndarray]:
    """`step -> example indices` of the configured `batch_layout` (default "mixed")."""
    if batch_layout(config) == "per_task":
        owners = arrays.task_owners(data, [t.label for t in tasks])
        return lambda step: arrays.per_task_batch_indices(
            config.seed, step, owners, len(tasks), config.batch_size
        )
    num = arrays.num_examples(data)
    return lambda step: arrays.batch_indices(config.seed, step, num, config.batch_size)


def train(
    config: ml_collections.ConfigDict,
    tasks: Sequence[Task],
    compiled: Compiled,
    state: Any,
    data: arrays.ArrayDataset,
    manager: ocp.CheckpointManager,
    writer: MetricsWriter,
    prepare: Prepare | None = None,
) -> Trained:
    """Runs steps `state["step"]` to `config.num_steps`, saving as configured.

    On a stop request (SIGTERM, or the preemption service on a pod) every process saves the
    same step and returns `stopped=True`; the caller then exits 0 and the same command resumes.
    """
    first_step = int(state["step"])
    progress = Progress(config.num_steps, first_step)
    preemption.install_sigterm_handler()
    rows = parallel.process_rows(config.batch_size, compiled.data_sharding)
    draw = batch_sampler(config, tasks, data)
    step, start = first_step, time.perf_counter()
    while step < config.num_steps:
        index = draw(step)
        if prepare is None:
            batch = arrays.take(data, index[rows])
        else:  # prepare sees the whole global batch, so every process cuts it the same way
            batch = jax.tree_util.tree_map(lambda a: a[rows], prepare(arrays.take(data, index)))
        state, metrics = compiled.train_step(
            state, parallel.to_global(batch, compiled.data_sharding, config.batch_size)
        )
        step += 1
        stop = preemption.should_stop(step)  # once per step, the same on every process
        log_due = step % config.log_every == 0 or step == config.num_steps
        save_due = manager.should_save(step) or stop
        if log_due or save_due:
            check_finite(jax.device_get(state["nonfinite"]), tasks, manager.directory)
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
            logging.info("Stop requested: saved step %d in %s; exiting.", step, manager.directory)
            return Trained(state, True, time.perf_counter() - start)
    jax.block_until_ready(state)
    seconds = time.perf_counter() - start
    checkpoint.save(manager, step, state, force=True)
    return Trained(state, False, seconds)


def check_finite(nonfinite: Mapping[str, Any], tasks: Sequence[Task], checkpoint_dir: str) -> None:
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


def evaluate(
    eval_step: Callable,
    state: Any,
    data: arrays.ArrayDataset,
    batch_size: int,
    data_sharding: NamedSharding,
    prepare: Prepare | None = None,
) -> dict[str, dict[str, float]]:
    """Per-task metric means over a whole data set; `prepare` maps each host batch first."""
    totals: dict[str, dict[str, float]] = {}
    rows = parallel.process_rows(batch_size, data_sharding)
    for batch in arrays.eval_batches(data, batch_size):
        batch = prepare(batch) if prepare is not None else batch
        local = jax.tree_util.tree_map(lambda a: a[rows], batch)
        global_batch = parallel.to_global(local, data_sharding, batch_size)
        sums = jax.device_get(eval_step(state, global_batch))
        for task, values in sums.items():
            acc = totals.setdefault(task, {})
            for k, v in values.items():
                acc[k] = acc.get(k, 0.0) + float(v)
    return {
        task: {k: v / max(acc["count"], 1.0) for k, v in acc.items() if k != "count"}
        | {"count": acc["count"]}
        for task, acc in totals.items()
    }


def report(
    results: Mapping[str, Mapping[str, float]], workdir: str, writer: MetricsWriter, step: int
) -> None:
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
        path = epath.Path(workdir) / "results.json"  # workdir may be a bucket
        path.write_text(json.dumps({"step": step, "test": results}, indent=2))


def final_state(workdir: str) -> Any:
    """The whole train state of the newest checkpoint in `workdir` (host arrays), with the
    integer keys NNX gives list items (Orbax reads them back as "0", "1"...), so that its
    parameters fit the model's own tree."""
    return checkpoint.int_keys(checkpoint.read_on_host(os.path.join(workdir, "checkpoints")))
