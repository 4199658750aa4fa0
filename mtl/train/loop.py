"""The one run loop: `run(experiment, workdir) -> Result`, for every kind of run.

In order: refuse a workdir whose checkpoints belong to another config; compile the steps with
their shardings; restore the newest complete checkpoint or start afresh (recording the config
only then, so a refused restore leaves no trace); run the steps with progress lines,
metrics.jsonl / TensorBoard, periodic evaluators, the non-finite check before any save,
periodic saves and a save-and-stop on SIGTERM or a pod's preemption notice; then save the final
state and run the final evaluators. The same command resumes a stopped run: batch `s` depends
only on `(seed, s)`, so a resumed run sees what an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.sharding import Mesh, NamedSharding

from mtl import checkpoint, parallel, preemption, sharding, workdir_files, workdir_lock
from mtl.data import prefetch
from mtl.logs import MetricsWriter, Progress
from mtl.train.experiment import EvalContext, Experiment, Result
from mtl.train.state import TrainState, template

PyTree = Any


@dataclasses.dataclass(frozen=True)
class Compiled:
    """The jitted init and train step, and the shardings they were compiled for."""

    init: Callable[[], TrainState]
    train_step: Callable[[TrainState, PyTree], tuple[TrainState, Any]]
    template: TrainState
    state_sharding: PyTree
    data_sharding: NamedSharding


def compile_experiment(experiment: Experiment) -> Compiled:
    """`compile_steps` of the experiment's steps, mesh and sharding rules."""
    return compile_steps(experiment.init, experiment.train_step, experiment.mesh, experiment.rules)


def compile_steps(
    init: Callable[[], TrainState],
    train_step: Callable[[TrainState, PyTree], tuple[TrainState, Any]],
    mesh: Mesh,
    rules: Sequence[Any] = (),
) -> Compiled:
    """Jits the steps over `mesh`: the state replicated except where the sharding `rules`
    split it (see `mtl.sharding`), the batch split over `data`, the state donated."""
    shapes = template(init)
    state_sharding = sharding.tree_shardings(shapes, rules, mesh)
    if rules:
        logging.info("%s", sharding.summary(shapes, state_sharding))
    data_sharding = parallel.batch_sharding(mesh)
    jitted_step = jax.jit(
        train_step,
        in_shardings=(state_sharding, data_sharding),
        out_shardings=(state_sharding, parallel.replicated(mesh)),
        donate_argnums=0,
    )
    jitted_init = jax.jit(init, out_shardings=state_sharding)
    return Compiled(jitted_init, jitted_step, shapes, state_sharding, data_sharding)


def run(experiment: Experiment, workdir: str) -> Result:
    """Trains (or resumes) `experiment` in `workdir` and runs its final evaluators.

    On a stop request every process saves the same step and `Result.stopped` is True (no
    final evaluation); the caller exits 0 and the same command resumes. The workdir is held
    (`mtl.workdir_lock`) for the whole call: a second run on it is refused.
    """
    with workdir_lock.hold(workdir):
        return _run_held(experiment, workdir)


def _run_held(experiment: Experiment, workdir: str) -> Result:
    started, config = time.perf_counter(), experiment.config
    experiment = experiment.scheduled()
    prefetch.options(config.get("input"))  # a bad field fails before anything compiles
    checkpoint.check_config(workdir, config, experiment.guarded)
    workdir_files.check_jsonl(os.path.join(workdir, "metrics.jsonl"), fix=METRICS_FIX)
    compiled = compile_experiment(experiment)
    manager = checkpoint.make_manager(
        os.path.join(workdir, "checkpoints"),
        every=config.checkpoint.every,
        keep=config.checkpoint.keep,
    )
    writer = None
    try:
        state = restore_or_start(experiment, compiled, manager, workdir)
        writer = MetricsWriter(workdir)  # after the restore: a refused one writes nothing
        context = EvalContext(
            workdir=workdir,
            step=int(state.step),
            writer=writer,
            mesh=experiment.mesh,
            state_sharding=compiled.state_sharding,
            data_sharding=compiled.data_sharding,
            first_step=int(state.step),
            started=started,
        )
        state, stopped, seconds = train(experiment, compiled, state, manager, context)
        if stopped:
            return Result(state, {}, True, seconds)
        context = dataclasses.replace(
            context, step=int(state.step), final=True, train_seconds=seconds
        )
        metrics = {e.name: e.fn(state, context) for e in experiment.evaluators if e.final}
        return Result(state, metrics, False, seconds)
    finally:
        manager.wait_until_finished()
        manager.close()  # a refused or failed restore still ends Orbax's background threads
        if writer is not None:
            writer.close()


# What to do about a damaged metrics.jsonl (the run appends to it).
METRICS_FIX = (
    "A run killed while writing leaves its last line cut off: delete that line, or move the "
    "file away, and run the same command again (the checkpoints are kept)."
)


def restore_or_start(
    experiment: Experiment, compiled: Compiled, manager: ocp.CheckpointManager, workdir: str
) -> TrainState:
    """The newest complete checkpoint restored into the compiled shardings, else a fresh state
    (through `experiment.fresh_start`); records the config after."""
    abstract = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        compiled.template,
        compiled.state_sharding,
    )
    state = checkpoint.restore_latest(manager, abstract)
    if state is not None:
        logging.info("Resumed from %s at step %d.", manager.directory, int(state.step))
    else:
        state = compiled.init()
        if experiment.fresh_start is not None:
            fresh = experiment.fresh_start(state, workdir)
            state = jax.device_put(fresh, compiled.state_sharding)
    checkpoint.record_config(workdir, experiment.config)
    return state


def train(
    experiment: Experiment,
    compiled: Compiled,
    state: TrainState,
    manager: ocp.CheckpointManager,
    context: EvalContext,
) -> tuple[TrainState, bool, float]:
    """Runs steps `state.step` to `config.num_steps`; returns `(state, stopped, seconds)`.
    `context` is what periodic evaluators get (with the step of the call)."""
    config, source = experiment.config, experiment.batches
    step = int(state.step)
    progress = Progress(config.num_steps, step)
    rows = parallel.process_rows(source.batch_size, compiled.data_sharding)
    stream = prefetch.prefetched(
        source, step, config.num_steps, rows, **prefetch.options(config.get("input"))
    )
    start = time.perf_counter()
    with contextlib.ExitStack() as cleanup:
        cleanup.enter_context(contextlib.closing(stream))  # a stop ends the prefetch too
        cleanup.callback(preemption.install_stop_handlers())  # Ctrl-C's own handler after
        while step < config.num_steps:
            batch = parallel.to_global(next(stream), compiled.data_sharding, source.batch_size)
            state, metrics = compiled.train_step(state, batch)
            step += 1
            stop = preemption.should_stop(step)  # once per step, the same on every process
            log_due = step % config.log_every == 0 or step == config.num_steps
            save_due = manager.should_save(step) or stop
            if log_due or save_due:
                check_finite(experiment, jax.device_get(state.nonfinite), manager.directory)
            if log_due:
                at = dataclasses.replace(context, step=step)
                log(experiment, at, progress, state, jax.device_get(metrics))
            if save_due:
                checkpoint.save(manager, step, state, force=stop)
            if stop:
                manager.wait_until_finished()
                logging.info(
                    "Stop requested: saved step %d in %s; exiting.", step, manager.directory
                )
                return state, True, time.perf_counter() - start
    jax.block_until_ready(state)
    seconds = time.perf_counter() - start
    checkpoint.save(manager, step, state, force=True)
    return state, False, seconds


def log(
    experiment: Experiment,
    context: EvalContext,
    progress: Progress,
    state: TrainState,
    metrics: Mapping[str, Any],
) -> None:
    """Writes the train metrics and any due evaluator's values; logs one progress line."""
    step = context.step
    scalars = {f"train/{k}": float(v) for k, v in metrics.items()}
    rate = progress.rate(step)
    shown = {label: scalars[f"train/{key}"] for label, key in experiment.progress.items()}
    last = step == experiment.config.num_steps
    for evaluator in experiment.evaluators:
        if evaluator.due(step) and not (last and evaluator.final):  # the final call follows
            values = evaluator.fn(state, context)
            scalars |= {f"{evaluator.name}/{k}": float(v) for k, v in values.items()}
            shown |= {f"{evaluator.name}_{k}": float(v) for k, v in values.items()}
    context.writer.write(step, scalars | {"steps_per_sec": rate})
    progress.log(progress.line(step, rate, shown))


def check_finite(experiment: Experiment, nonfinite: Mapping[str, Any], checkpoint_dir) -> None:
    """Raises if any step so far had a non-finite loss or update (see `TrainState.advanced`)."""
    step = int(nonfinite["step"])
    if step < 0:
        return
    flags = np.asarray(nonfinite["flags"])
    bad = [name for name, flag in zip(experiment.loss_names, flags, strict=True) if flag]
    what = f"loss of {experiment.loss_noun} {', '.join(bad)}" if bad else "parameter update"
    raise FloatingPointError(
        f"Non-finite {what} at step {step}. Stopped without saving it; the newest good "
        f"checkpoint in {checkpoint_dir} is kept. {experiment.nonfinite_hint}"
    )
