"""The contract every multi-task weighting method follows.

A method turns one step's per-task losses into one update direction. Loss weightings (EW, UW,
DWA, RLW, FAMO) only rescale the losses; gradient methods (GradNorm, and later PCGrad, MGDA-UB,
CAGrad, Nash-MTL, Aligned-MTL) need per-task gradients. Both see the same `TaskObjective`:
the shared trunk as a function of its parameters and the task heads as a function of their
parameters and the shared representation. That split lets a method differentiate through the
whole model, through the shared parameters only, or only up to the representation (MGDA-UB),
without the train step knowing which.

A method is a `Weighting`: two pure functions, like an optax `GradientTransformation`:

    state = method.init(num_tasks)
    update, state = method.update(objective, state, rng)

`update` runs the forward and backward passes it needs and returns gradients for the shared and
task-specific parameters. Methods with parameters of their own (UW's log-variances, GradNorm's and
FAMO's logits) keep them, and their optimizer state, inside `state`: the train step never sees them.

Everything here runs under `jax.jit` with named shardings: losses are means over the global batch,
so per-task gradients and their reductions are correct on any mesh without collectives here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

PyTree = Any


class TaskObjective(NamedTuple):
    """One step's multi-task loss, split at the shared representation.

    Attributes:
      shared: parameters every task uses (the trunk).
      task_specific: parameters only one task uses (the heads), usually a dict keyed by task.
      representation: `shared -> (z, aux)`; `z` is what the heads read, `aux` is carried out
        unchanged (for example updated batch-norm statistics).
      task_losses: `(task_specific, z) -> (losses, aux)` with `losses` of shape [num_tasks];
        `aux` is carried out unchanged (for example logits for metrics).
      per_task_representation: None, or, when the batch is split into one group of rows per
        task (`batch_layout="per_task"`), `representation` with the shared parameters stacked
        over tasks: `shared_stacked -> (z, aux)`, where the rows of group t depend only on
        `shared_stacked[t]` and task t's loss reads only group t. Then one backward pass gives
        every task's gradient of the shared parameters (`per_task_shared_grads`).
    """

    shared: PyTree
    task_specific: PyTree
    representation: Callable[[PyTree], tuple[jax.Array, Any]]
    task_losses: Callable[[PyTree, jax.Array], tuple[jax.Array, Any]]
    per_task_representation: Callable[[PyTree], tuple[jax.Array, Any]] | None = None


class Update(NamedTuple):
    """What a method returns to the train step.

    Attributes:
      shared_grads: gradient for `TaskObjective.shared`.
      task_grads: gradient for `TaskObjective.task_specific`.
      losses: the unweighted per-task losses at the current parameters, [num_tasks].
      weights: the effective per-task weights used this step, [num_tasks] (for logging; methods
        that do not weight losses, such as PCGrad, report ones).
      representation_aux: the `aux` of `TaskObjective.representation`.
      task_aux: the `aux` of `TaskObjective.task_losses`.
    """

    shared_grads: PyTree
    task_grads: PyTree
    losses: jax.Array
    weights: jax.Array
    representation_aux: Any
    task_aux: Any


class Weighting(NamedTuple):
    """A multi-task weighting method: a pair of pure functions.

    Attributes:
      init: `num_tasks -> state`.
      update: `(objective, state, rng) -> (Update, state)`.
      after_update: optional `(state, losses_after) -> state`, called by the train step with the
        per-task losses of the same batch at the updated parameters (FAMO needs them). The train
        step pays that extra forward pass only when this is set.
      init_for_shared: optional `(num_tasks, shared) -> state`, used instead of `init` by
        `initial_state` for methods whose state is shaped like the shared parameters (DB-MTL's
        running per-task gradients).
    """

    init: Callable[[int], PyTree]
    update: Callable[[TaskObjective, PyTree, jax.Array], tuple[Update, PyTree]]
    after_update: Callable[[PyTree, jax.Array], PyTree] | None = None
    init_for_shared: Callable[[int, PyTree], PyTree] | None = None


def initial_state(method: Weighting, num_tasks: int, shared: PyTree) -> PyTree:
    """The method's state before the first step; `shared` are the shared parameters (only their
    shapes and dtypes are read). Train steps call this rather than `method.init`."""
    if method.init_for_shared is not None:
        return method.init_for_shared(num_tasks, shared)
    return method.init(num_tasks)


def forward(objective: TaskObjective) -> tuple[jax.Array, Any, Any]:
    """Per-task losses without gradients: `(losses, representation_aux, task_aux)`."""
    z, rep_aux = objective.representation(objective.shared)
    losses, task_aux = objective.task_losses(objective.task_specific, z)
    return losses, rep_aux, task_aux


def weighted_update(objective: TaskObjective, weights: jax.Array) -> Update:
    """One backward pass through `sum_t weights[t] * loss_t`; `weights` is treated as constant."""
    weights = jax.lax.stop_gradient(weights)

    def total(shared, task_specific):
        z, rep_aux = objective.representation(shared)
        losses, task_aux = objective.task_losses(task_specific, z)
        return jnp.sum(weights * losses), (losses, rep_aux, task_aux)

    (_, (losses, rep_aux, task_aux)), (g_shared, g_task) = jax.value_and_grad(
        total, argnums=(0, 1), has_aux=True
    )(objective.shared, objective.task_specific)
    return Update(g_shared, g_task, losses, weights, rep_aux, task_aux)


def _losses_and_pullback(objective: TaskObjective):
    """One forward pass: `(losses, pullback, (rep_aux, task_aux))`, where `pullback(cotangent)`
    gives the gradients of `cotangent . losses` for the shared and task-specific parameters."""

    def losses_fn(shared, task_specific):
        z, rep_aux = objective.representation(shared)
        losses, task_aux = objective.task_losses(task_specific, z)
        return losses, (rep_aux, task_aux)

    return jax.vjp(losses_fn, objective.shared, objective.task_specific, has_aux=True)


def loss_dependent_update(
    objective: TaskObjective, weights_of: Callable[[jax.Array], jax.Array]
) -> Update:
    """One forward pass, `weights = weights_of(losses)` (treated as constant), then one backward
    pass through `sum_t weights[t] * loss_t`: for weightings that read this step's losses
    (FAMO, STCH) at the cost of a single gradient."""
    losses, pullback, (rep_aux, task_aux) = _losses_and_pullback(objective)
    weights = jax.lax.stop_gradient(weights_of(jax.lax.stop_gradient(losses)))
    shared_grads, task_grads = pullback(weights.astype(losses.dtype))
    return Update(shared_grads, task_grads, losses, weights, rep_aux, task_aux)


def per_task_shared_grads(objective: TaskObjective) -> tuple[PyTree, PyTree, Update]:
    """Per-task gradients of the shared parameters, from one vectorised computation.

    One forward pass, then the pullback is `vmap`-ed over the rows of an identity matrix, so
    task t's cotangent selects loss t. No Python loop of backward passes. When the objective
    has a `per_task_representation` (one group of rows per task), `_grouped_grads` does it in
    one ordinary backward pass instead.

    Returns:
      `(shared_grads, task_grads, update)`: `shared_grads` has a leading [num_tasks] axis on
      every leaf; `task_grads` is the gradient of the plain sum of losses for the task-specific
      parameters (each head only sees its own loss, so no per-task copy is needed);
      `update` carries the losses and auxiliaries with unit weights and summed gradients, to be
      `_replace`-d by the caller.
    """

    if objective.per_task_representation is not None:
        return _grouped_grads(objective)

    losses, pullback, (rep_aux, task_aux) = _losses_and_pullback(objective)
    num_tasks = losses.shape[0]
    shared_grads, _ = jax.vmap(pullback)(jnp.eye(num_tasks, dtype=losses.dtype))
    summed_shared, task_grads = pullback(jnp.ones_like(losses))
    update = Update(summed_shared, task_grads, losses, jnp.ones_like(losses), rep_aux, task_aux)
    return shared_grads, task_grads, update


def _grouped_grads(objective: TaskObjective) -> tuple[PyTree, PyTree, Update]:
    """`per_task_shared_grads` when task t's loss depends on the shared parameters only through
    group t's rows: each group gets its own copy of the shared parameters, and the gradient of
    the summed loss with respect to copy t is task t's gradient. One forward and one backward
    pass, as for a single gradient (the [T, P] copies are the only extra memory)."""
    # The number of tasks, from shapes alone (traced, never run).
    num_tasks = jax.eval_shape(lambda: forward(objective)[0]).shape[0]
    stacked = jax.tree.map(lambda p: jnp.broadcast_to(p, (num_tasks, *p.shape)), objective.shared)
    z, rep_pullback, rep_aux = jax.vjp(objective.per_task_representation, stacked, has_aux=True)
    losses, head_pullback, task_aux = jax.vjp(
        objective.task_losses, objective.task_specific, z, has_aux=True
    )
    task_grads, z_grads = head_pullback(jnp.ones_like(losses))
    (shared_grads,) = rep_pullback(z_grads)
    summed_shared = jax.tree.map(lambda g: jnp.sum(g, axis=0), shared_grads)
    update = Update(summed_shared, task_grads, losses, jnp.ones_like(losses), rep_aux, task_aux)
    return shared_grads, task_grads, update


def representation_grads(objective: TaskObjective) -> tuple[jax.Array, Any]:
    """Per-task gradients of the losses with respect to the shared representation `z`.

    Returns `(z_grads, (losses, rep_aux, task_aux, z))` with `z_grads` of shape
    [num_tasks, *z.shape]. Costs one pass through the heads per task (vectorised), none through
    the trunk: this is what MGDA-UB and cheap GradNorm variants use.
    """
    z, rep_aux = objective.representation(objective.shared)
    z = jax.lax.stop_gradient(z)

    def head_losses(z_):
        losses, task_aux = objective.task_losses(objective.task_specific, z_)
        return losses, task_aux

    losses, pullback, task_aux = jax.vjp(head_losses, z, has_aux=True)
    (z_grads,) = jax.vmap(pullback)(jnp.eye(losses.shape[0], dtype=losses.dtype))
    return z_grads, (losses, rep_aux, task_aux, z)


def flatten_task_grads(shared_grads: PyTree) -> jax.Array:
    """Stack per-task gradient pytrees (leading task axis) into a [num_tasks, P] matrix."""
    leaves = jax.tree_util.tree_leaves(shared_grads)
    return jnp.concatenate([leaf.reshape(leaf.shape[0], -1) for leaf in leaves], axis=1)


def unflatten_like(flat: jax.Array, like: PyTree) -> PyTree:
    """Inverse of `flatten_task_grads` for one combined gradient `flat` of shape [P]."""
    leaves, treedef = jax.tree_util.tree_flatten(like)
    out, offset = [], 0
    for leaf in leaves:
        size = leaf[0].size
        out.append(flat[offset : offset + size].reshape(leaf.shape[1:]))
        offset += size
    return jax.tree_util.tree_unflatten(treedef, out)
