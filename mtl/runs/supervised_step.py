"""The supervised (multi-task and fine-tuning) train and evaluation steps, as pure functions
of a `TrainState`:

    params = {"trunk": ..., "heads": {task: ...}},
    model_state = {"trunk": ...} and, when some head keeps statistics (CGC's task experts),
        "heads": {task: ...} for those heads,
    method_state = the weighting's state, nonfinite flags = one per task.

`make_steps` closes over everything static (the model's graph, tasks, optimizer, weighting
method) and returns `init`, `train_step` and `eval_step`; the caller jits them with shardings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from mtl.models.functional import PureModule
from mtl.models.multitask import MultiTaskModel
from mtl.tasks import Task
from mtl.train.state import TrainState
from mtl.weighting.base import TaskObjective, Weighting, initial_state

PyTree = Any


def _is_key(leaf: jax.Array) -> bool:
    return jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def group_rngs(state: PyTree, group: jax.Array) -> PyTree:
    """The trunk's state for one group: its random streams (dropout) folded with the group
    index, so groups draw different masks instead of one mask repeated per group."""
    return jax.tree.map(lambda a: jax.random.fold_in(a, group) if _is_key(a) else a, state)


def merge_groups(new: PyTree, old: PyTree) -> PyTree:
    """The trunk's state after a grouped pass (`new` has a leading group axis) from the
    per-group states: batch-norm statistics by their mean (the groups are batches of the same
    size); counters, equal across groups, from group 0; the random streams' keys as they were
    in `old` (only their counters move, as in an ungrouped pass)."""

    def merge(n: jax.Array, o: jax.Array) -> jax.Array:
        if _is_key(o):
            return o
        return n.mean(axis=0) if jnp.issubdtype(n.dtype, jnp.floating) else n[0]

    return jax.tree.map(merge, new, old)


class HeadResults(NamedTuple):
    """The `aux` of the objective's `task_losses`: every task's outputs, and the new state
    of the heads that keep one (batch-norm statistics of CGC's task experts)."""

    outputs: dict[str, jax.Array]
    state: dict[str, PyTree]


class Steps(NamedTuple):
    init: Any  # () -> state
    train_step: Any  # (state, batch) -> (state, metrics)
    eval_step: Any  # (state, batch) -> {task: {metric: sum, "count": n}}
    # (params, model_state, batch, train) -> TaskObjective: for steps that wrap these
    # (task affinity, distillation) and need the same split of the model.
    objective: Any = None


def default_task_loss(task: Task, outputs: jax.Array, batch: PyTree) -> jax.Array:
    """The task's own loss on its labels and mask."""
    return task.loss_fn(outputs, batch["labels"][task.label], batch["masks"][task.label])


def make_objective(
    trunk: PureModule,
    heads: dict[str, PureModule],
    tasks: tuple[Task, ...],
    task_loss: Any,
    per_task_batch: bool,
):
    """`(params, model_state, batch, train) -> TaskObjective`: the trunk's representation and
    the per-task losses, as the weighting methods take them (see `make_steps`)."""

    def objective(params, model_state, batch, train: bool) -> TaskObjective:
        def representation(shared):
            return trunk.apply(shared, model_state["trunk"], batch["inputs"], train=train)

        head_states = model_state.get("heads", {})

        def task_losses(task_params, z):
            outputs, new_states = {}, {}
            for t in tasks:
                outputs[t.name], new = heads[t.name].apply(
                    task_params[t.name],
                    head_states.get(t.name, {}),
                    z,
                    inputs=batch["inputs"],
                    train=train,
                )
                if t.name in head_states:
                    new_states[t.name] = new
            losses = jnp.stack([task_loss(t, outputs[t.name], batch) for t in tasks])
            return losses, HeadResults(outputs, new_states)

        if not (per_task_batch and train):
            return TaskObjective(params["trunk"], params["heads"], representation, task_losses)
        per_group = lambda axis: grouped_representation(trunk, len(tasks), model_state, batch, axis)
        return TaskObjective(
            params["trunk"], params["heads"], per_group(None), task_losses, per_group(0)
        )

    return objective


def grouped_representation(trunk: PureModule, groups: int, model_state, batch, shared_axis):
    """The trunk on each task's group of rows; `shared_axis` 0: one copy of the shared
    parameters per group (the per-task gradients), None: one copy for all."""

    def apply(shared):
        inputs = jax.tree.map(lambda a: a.reshape(groups, -1, *a.shape[1:]), batch["inputs"])
        z, state = jax.vmap(
            lambda p, x, g: trunk.apply(p, group_rngs(model_state["trunk"], g), x, train=True),
            in_axes=(shared_axis, 0, 0),
        )(shared, inputs, jnp.arange(groups))
        z = jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:]), z)
        return z, merge_groups(state, model_state["trunk"])

    return apply


def make_steps(
    model: MultiTaskModel,
    tasks: Sequence[Task],
    optimizer: optax.GradientTransformation,
    weighting: Weighting,
    seed: int,
    task_loss: Any = None,
    per_task_batch: bool = False,
) -> Steps:
    """Pure init / train / eval functions for `model` trained on `tasks`.

    `task_loss(task, outputs, batch) -> scalar` replaces `task.loss_fn` on the task's labels
    (distillation reads the teacher's outputs from the batch); None keeps the task's own loss.

    `per_task_batch`: every training batch is `len(tasks)` equal groups of rows, group t
    holding only task t's examples (`batch_layout="per_task"`, as LibMTL's `multi_input`).
    The trunk then runs on each group separately, so batch norm takes its statistics per
    task, no task's loss depends on another task's rows, and the per-task-gradient methods
    get all T gradients from one backward pass. Evaluation is unchanged (running statistics).
    """
    task_loss = default_task_loss if task_loss is None else task_loss
    trunk, trunk_params, trunk_state = PureModule.split(model.trunk)
    heads, head_params, head_states = {}, {}, {}
    for name, head in model.heads.items():
        heads[name], head_params[name], state = PureModule.split(head)
        if state:
            head_states[name] = state
    tasks = tuple(tasks)
    # Only models with stateful heads carry "heads" in model_state: checkpoints of the others
    # keep the layout they always had.
    model_state = {"trunk": trunk_state, **({"heads": head_states} if head_states else {})}

    def init() -> TrainState:
        return TrainState.create(
            {"trunk": trunk_params, "heads": head_params},
            model_state,
            optimizer,
            seed=seed,
            losses=[t.name for t in tasks],
            method_state=initial_state(weighting, len(tasks), trunk_params),
        )

    objective = make_objective(trunk, heads, tasks, task_loss, per_task_batch)

    train_step = make_train_step(objective, weighting, optimizer, tasks)

    def eval_step(state: TrainState, batch: PyTree) -> dict[str, dict[str, jax.Array]]:
        obj = objective(state.params, state.model_state, batch, train=False)
        z, _ = obj.representation(obj.shared)
        _, results = obj.task_losses(obj.task_specific, z)
        outputs = results.outputs
        return {
            t.name: t.metric_sums(
                outputs[t.name], batch["labels"][t.label], batch["masks"][t.label]
            )
            for t in tasks
        }

    return Steps(init, train_step, eval_step, objective)


def make_train_step(objective, weighting: Weighting, optimizer, tasks: tuple[Task, ...]):
    """`(state, batch) -> (state, metrics)`: the weighting turns the objective into gradients,
    the optimizer applies them, and the state records the first non-finite step."""

    def train_step(state: TrainState, batch: PyTree) -> tuple[TrainState, dict[str, jax.Array]]:
        rng = jax.random.fold_in(state.rng, state.step)
        obj = objective(state.params, state.model_state, batch, train=True)
        update, weighting_state = weighting.update(obj, state.method_state, rng)
        grads = {"trunk": update.shared_grads, "heads": update.task_grads}
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        model_state = {"trunk": update.representation_aux}
        if update.task_aux.state:
            model_state["heads"] = update.task_aux.state
        if weighting.after_update is not None:
            # FAMO: the same batch's losses after the step (forward only, statistics discarded).
            after = objective(params, model_state, batch, train=True)
            z, _ = after.representation(after.shared)
            losses_after, _ = after.task_losses(after.task_specific, z)
            weighting_state = weighting.after_update(weighting_state, losses_after)
        new_state = state.advanced(
            params,
            updates,
            update.losses,
            opt_state=opt_state,
            model_state=model_state,
            method_state=weighting_state,
        )
        return new_state, step_metrics(tasks, update, batch)

    return train_step


def step_metrics(tasks: Sequence[Task], update: Any, batch: PyTree) -> dict[str, jax.Array]:
    """`loss/<task>`, `weight/<task>` and each task metric's batch mean `<metric>/<task>`."""
    metrics = {}
    for i, t in enumerate(tasks):
        metrics[f"loss/{t.name}"] = update.losses[i]
        metrics[f"weight/{t.name}"] = update.weights[i]
        sums = t.metric_sums(
            update.task_aux.outputs[t.name], batch["labels"][t.label], batch["masks"][t.label]
        )
        count = jnp.maximum(sums.pop("count"), 1.0)
        metrics.update({f"{m}/{t.name}": s / count for m, s in sums.items()})
    return metrics
