"""Progressive networks (`trainer="progressive"`; Rusu et al., 2016): one new column per task.

`config.progressive.phases` lists the tasks in order, one task of `config.tasks` per phase.
Phase k is an ordinary run (in `<workdir>/phase<k>`, resumable like any run) that trains a new
column (`mtl.transfer.progressive`: an MLP of widths `config.progressive.hidden` on the
flattened inputs, with lateral connections from every earlier column) on task k's examples.
The earlier columns are inputs to it: they sit in the train state's `extras["columns"]`
(checkpointed with the phase, never given to the optimizer), and the train step differentiates
with respect to the new column only, so they stay bit-identical. Each phase's final state is
passed on as a value: its columns are the next phase's frozen ones.

Each phase's `test` evaluator scores every task learned so far with its own column, so the
accuracy of an early task cannot drop. `<workdir>/results.json` holds the final per-task test
metrics, the metrics after each phase, and whether column 1 came out of the last phase
bit-identical to how phase 0 left it.

    python -m launch.train --config=configs/omniglot_progressive.py --workdir=/tmp/pnn \
        --config.data.data_dir=../shared/data/omniglot
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mtl import optim, parallel, workdir_files
from mtl.data import arrays, batches, sources
from mtl.errors import ConfigError
from mtl.runs import evaluators, supervised
from mtl.tasks import Task, tasks_from_config
from mtl.train.experiment import Experiment, Result
from mtl.train.loop import run
from mtl.train.state import TrainState
from mtl.transfer import progressive

# Config fields that define what a phase's checkpoints hold.
GUARDED = ("tasks", "progressive", "optimizer", "seed")
COLUMNS = "columns"  # the key of the frozen columns in `TrainState.extras`


def default_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(phases=(), hidden=(256, 256)))


def check(config: ml_collections.ConfigDict) -> list[Task]:
    """The tasks in phase order, or one `ConfigError` naming the field to fix."""
    tasks = {t.name: t for t in tasks_from_config(config.tasks)}
    options = config.get("progressive")
    if options is None:
        raise ConfigError(
            "trainer=progressive needs a config.progressive block "
            "(mtl.runs.progressive_networks.default_config())."
        )
    phases = [str(p).strip() for p in options.phases]
    if not phases:
        raise ConfigError(
            "config.progressive.phases is empty: list the tasks in order, one per phase, "
            "e.g. ('Greek', 'Latin')."
        )
    grouped = [p for p in phases if "," in p]
    if grouped:
        raise ConfigError(
            f"config.progressive.phases takes one task per phase (each phase adds one column), "
            f"got {', '.join(map(repr, grouped))}."
        )
    unknown = [p for p in phases if p not in tasks]
    if unknown:
        raise ConfigError(
            f"config.progressive.phases names unknown task(s) {', '.join(map(repr, unknown))}; "
            f"tasks: {', '.join(sorted(tasks))}."
        )
    repeated = sorted({p for p in phases if phases.count(p) > 1})
    if repeated:
        raise ConfigError(
            f"config.progressive.phases lists {', '.join(repeated)} more than once: each task "
            "gets one column."
        )
    hidden = tuple(options.hidden)
    if not hidden or not all(isinstance(h, int) and h > 0 for h in hidden):
        raise ConfigError(
            f"config.progressive.hidden must be one or more positive layer widths, got {hidden!r}."
        )
    supervised.require_mixed(config)
    sources.SOURCES.get(config.data.name, field="data.name")
    optim.make_optimizer(config.optimizer, config.num_steps)
    return [tasks[p] for p in phases]


def own_examples(data: arrays.ArrayDataset, tasks: Sequence[Task]) -> arrays.ArrayDataset:
    """The examples labelled for any of `tasks`, with only those tasks' label fields."""
    return arrays.select_fields(data, sorted({t.label for t in tasks}))


def column_sizes(config: ml_collections.ConfigDict, input_shape) -> tuple[int, ...]:
    return (int(np.prod(input_shape)), *map(int, config.progressive.hidden))


def column_train_step(task: Task, optimizer: optax.GradientTransformation):
    """`(state, batch) -> (state, metrics)`: the new column (`state.params`) on `task`, the
    earlier columns (`state.extras["columns"]`) as fixed inputs."""

    def train_step(state: TrainState, batch) -> tuple[TrainState, dict[str, jax.Array]]:
        labels, mask = batch["labels"][task.label], batch["masks"][task.label]

        def loss_fn(column):
            logits = progressive.new_column_logits(state.extras[COLUMNS], column, batch["inputs"])
            return task.loss_fn(logits, labels, mask)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = state.advanced(params, updates, loss, opt_state=opt_state)
        return new_state, {f"loss/{task.name}": loss}

    return train_step


def column_eval_step(tasks: Sequence[Task]):
    """`(state, batch) -> {task: metric sums}`: task k read by column k."""

    def eval_step(state: TrainState, batch) -> dict[str, dict[str, jax.Array]]:
        outputs = progressive.forward([*state.extras[COLUMNS], state.params], batch["inputs"])
        return {
            t.name: t.metric_sums(logits, batch["labels"][t.label], batch["masks"][t.label])
            for t, logits in zip(tasks, outputs, strict=True)
        }

    return eval_step


def phase_experiment(
    config: ml_collections.ConfigDict,
    k: int,
    tasks: Sequence[Task],
    data: sources.MultiTaskData,
    frozen: Sequence[Any],
) -> Experiment:
    """Phase `k`: a new column for `tasks[k]` on top of the `frozen` columns (host values)."""
    task = tasks[k]
    optimizer = optim.make_optimizer(config.optimizer, config.num_steps)
    sizes = column_sizes(config, arrays.input_shape(data.train))
    frozen = [jax.tree.map(np.asarray, c) for c in frozen]

    def init() -> TrainState:
        key = jax.random.fold_in(jax.random.key(config.seed), k)
        column = progressive.init_column(key, sizes, task.num_outputs, k)
        # Zeros of the right shapes: `fresh_start` puts the carried columns in (a resumed run
        # restores them from its checkpoint), so init compiles without them as constants.
        placeholders = jax.tree.map(jnp.zeros_like, frozen)
        return TrainState.create(
            column, {}, optimizer, seed=config.seed + k, losses=(task.name,),
            extras={COLUMNS: placeholders},
        )  # fmt: skip

    def fresh_start(state: TrainState, workdir: str) -> TrainState:
        del workdir
        return state.with_extras(**{COLUMNS: frozen})

    mesh = parallel.make_mesh(config.get("mesh"))
    parallel.check_batch_size(config.batch_size, mesh)
    parallel.check_batch_size(config.eval_batch_size, mesh, field="eval_batch_size")
    train_data = own_examples(data.train, [task])
    test = evaluators.test_metrics(
        column_eval_step(tasks[: k + 1]), own_examples(data.test, tasks[: k + 1]),
        config.eval_batch_size,
    )  # fmt: skip
    return Experiment(
        config=config,
        init=init,
        train_step=column_train_step(task, optimizer),
        batches=batches.ArrayBatches(
            train_data,
            batches.mixed_sampler(config.seed + k, train_data, config.batch_size),
            config.batch_size,
        ),
        mesh=mesh,
        guarded=GUARDED,
        loss_names=(task.name,),
        progress={task.name: f"loss/{task.name}"},
        evaluators=(test,),
        fresh_start=fresh_start,
    )


def train(config: ml_collections.ConfigDict, workdir: str) -> Result:
    """Trains one column per phase; `Result.metrics["test"]` holds every task's final metrics
    (each read by its own column) and `["progressive"]` the report of `results.json`."""
    tasks = check(config)
    data = supervised.load_data(config, tasks)  # once; each phase takes its task's examples
    columns: list[Any] = []
    first: Any = None  # column 1 as phase 0 left it (host copy)
    per_phase = []
    for k in range(len(tasks)):
        experiment = phase_experiment(config, k, tasks, data, columns)
        result = run(experiment, os.path.join(workdir, f"phase{k}"))
        if result.stopped:  # the same command resumes this phase
            return result
        per_phase.append(result["test"])
        columns = jax.device_get([*result.state.extras[COLUMNS], result.state.params])
        if k == 0:
            first = jax.tree.map(np.array, columns[0])
    identical = all(
        np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(columns[0]), strict=True)
    )
    final = per_phase[-1]
    report = {
        "final": final,
        "after_phase": per_phase,
        "phases": [t.name for t in tasks],
        "column1_bit_identical": bool(identical),
    }
    if jax.process_index() == 0:
        workdir_files.write_json(os.path.join(workdir, "results.json"), report)
    return dataclasses.replace(result, metrics={"test": final, "progressive": report})
