"""Shared plumbing of the per-task-gradient methods (PCGrad, MGDA-UB, CAGrad, Nash-MTL, Aligned).

Every one of these methods, as published, returns a shared-parameter gradient that is a linear
combination `sum_t w_t g_t` of the per-task gradients `g_t` (PCGrad's projections subtract
multiples of other tasks' gradients; CAGrad adds a multiple of `G^T w` to the mean). The
weights depend on the gradients only through their Gram matrix `K = G G^T` [T, T]. So a method
is a `solve(K, losses, state, rng) -> (weights, state)` on a T x T matrix, and this module does
the rest once:

  * `wrt="shared"`: `g_t` are the gradients of the shared parameters, from one `vmap` over a
    `vjp` (`base.per_task_shared_grads`); `K` is contracted leaf by leaf (no [T, P] copy) and
    the combination is one `tensordot` per leaf. The T gradients of every shared parameter
    exist together ([T, P] floats): the combination needs them after the solve.
  * `wrt="shared_gramian"`: the same `g_t` and the same update, from their Gram matrix only
    (the Gramian idea of TorchJD's autogram). The T cotangents are pulled back through the
    trunk together and each parameter's T gradients are reduced to their T x T block as they
    are made (`shared_gramian`); after the solve, one more backward pass through the trunk
    with the combined cotangent `sum_t w_t dL_t/dz` gives the update. It costs that extra
    backward pass and saves the [T, P] Jacobian: the choice for large trunks. With one group
    of rows per task (`batch_layout="per_task"`) it is `shared`, whose per-task gradients come
    from one ordinary backward pass there.
  * `wrt="representation"`: `g_t` are the gradients at the shared representation `z` (the "UB"
    variants of Sener & Koltun 2018): T cheap passes through the heads, then ONE backward pass
    through the trunk with the cotangent `sum_t w_t dL_t/dz`.

The heads get the plain gradient of their own loss, as in the papers and LibMTL (each head's
parameters see one task only, so there is nothing to combine).

Sharding: `K` is a full contraction over parameters (replicated) or over the batch axis of `z`
(sharded over `data`); under `jax.jit` XLA inserts the all-reduce, so the weights are those of
the global batch on any mesh (tested on 8 fake devices).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from mtl.errors import ConfigError
from mtl.weighting import base

PyTree = Any
WRT = ("shared", "shared_gramian", "representation")
# (gram [T, T] float32, losses [T] float32, state, rng) -> (weights [T], state)
Solve = Callable[[jax.Array, jax.Array, PyTree, jax.Array], tuple[jax.Array, PyTree]]


def check_wrt(method: str, wrt: str) -> None:
    if wrt not in WRT:
        raise ConfigError(
            f"{method}: wrt must be one of {WRT}, got {wrt!r} "
            f"(config field weighting.{method}.wrt)."
        )


def gram(per_task: PyTree) -> jax.Array:
    """`K[s, t] = <g_s, g_t>` in float32 for a pytree whose leaves have a leading task axis."""
    total = None
    for leaf in jax.tree_util.tree_leaves(per_task):
        flat = leaf.reshape(leaf.shape[0], -1).astype(jnp.float32)
        k = flat @ flat.T
        total = k if total is None else total + k
    return total


def task_squared_norms(per_task: PyTree) -> jax.Array:
    """`|g_t|^2` [T] in float32 for a pytree whose leaves have a leading task axis: the
    diagonal of `gram` without its T x T products."""
    return sum(
        jnp.sum(jnp.square(leaf.reshape(leaf.shape[0], -1).astype(jnp.float32)), axis=1)
        for leaf in jax.tree_util.tree_leaves(per_task)
    )


def combine(weights: jax.Array, per_task: PyTree) -> PyTree:
    """`sum_t weights[t] * g_t` leaf by leaf, in each leaf's dtype."""
    return jax.tree.map(
        lambda g: jnp.tensordot(weights.astype(g.dtype), g, axes=1).astype(g.dtype), per_task
    )


def _shared_route(objective: base.TaskObjective, solve: Solve, state, rng):
    shared_grads, task_grads, update = base.per_task_shared_grads(objective)
    losses = jax.lax.stop_gradient(update.losses).astype(jnp.float32)
    weights, state = solve(gram(shared_grads), losses, state, rng)
    weights = jax.lax.stop_gradient(weights)
    update = update._replace(
        shared_grads=combine(weights, shared_grads), task_grads=task_grads, weights=weights
    )
    return update, state


class RepresentationSplit(NamedTuple):
    """One forward pass split at the shared representation `z`, with the per-task cotangents
    at `z` (`z_grads`, leading task axis: T cheap pullbacks through the heads, vectorised) and
    the heads' plain gradient; `rep_pullback(cotangent at z)` is the trunk's backward pass."""

    losses: jax.Array
    z_grads: PyTree
    task_grads: PyTree
    rep_pullback: Callable
    rep_aux: Any
    task_aux: Any


def split_at_representation(objective: base.TaskObjective) -> RepresentationSplit:
    z, rep_pullback, rep_aux = jax.vjp(objective.representation, objective.shared, has_aux=True)
    losses, head_pullback, task_aux = jax.vjp(
        objective.task_losses, objective.task_specific, z, has_aux=True
    )
    _, z_grads = jax.vmap(head_pullback)(jnp.eye(losses.shape[0], dtype=losses.dtype))
    task_grads, _ = head_pullback(jnp.ones_like(losses))
    return RepresentationSplit(losses, z_grads, task_grads, rep_pullback, rep_aux, task_aux)


def shared_gramian(split: RepresentationSplit) -> jax.Array:
    """The Gram matrix of the per-task gradients of the shared parameters, without their
    [T, P] Jacobian.

    The T cotangents at the representation are pulled back through the trunk together
    (`vmap`). Each parameter's T gradients (its layer's input against the T cotangents of its
    output) are contracted to their T x T block and read by nothing else, so XLA frees them
    while the backward pass goes on to the layers below: the step holds a few layers' per-task
    gradients at a time, not all of them (`tests/test_gramian.py` checks the compiled step's
    temporary memory).
    """
    (per_task,) = jax.vmap(split.rep_pullback)(split.z_grads)
    return gram(per_task)


def _through_representation(gram_of: Callable[[RepresentationSplit], jax.Array]):
    """A route that solves on `gram_of(split)` and then pulls the combined cotangent
    `sum_t w_t dL_t/dz` back through the trunk once: the update is `sum_t w_t g_t` for the
    gradients whose Gram matrix was used."""

    def route(objective: base.TaskObjective, solve: Solve, state, rng):
        split = split_at_representation(objective)
        losses = jax.lax.stop_gradient(split.losses).astype(jnp.float32)
        weights, state = solve(gram_of(split), losses, state, rng)
        weights = jax.lax.stop_gradient(weights)
        (shared_grads,) = split.rep_pullback(combine(weights, split.z_grads))
        update = base.Update(
            shared_grads, split.task_grads, split.losses, weights, split.rep_aux, split.task_aux
        )
        return update, state

    return route


_representation_route = _through_representation(lambda split: gram(split.z_grads))
_gramian_route = _through_representation(shared_gramian)


def _gramian_or_grouped_route(objective: base.TaskObjective, solve: Solve, state, rng):
    if objective.per_task_representation is not None:
        # One group of rows per task: the T gradients come from one ordinary backward pass,
        # the cheapest route already.
        return _shared_route(objective, solve, state, rng)
    return _gramian_route(objective, solve, state, rng)


def gradient_method(
    init: Callable[[int], PyTree], solve: Solve, wrt: str = "shared"
) -> base.Weighting:
    """A `Weighting` whose shared gradient is `sum_t w_t g_t` with `w = solve(K, ...)`."""
    route = {
        "shared": _shared_route,
        "shared_gramian": _gramian_or_grouped_route,
        "representation": _representation_route,
    }[wrt]

    def update(objective: base.TaskObjective, state: PyTree, rng: jax.Array):
        return route(objective, solve, state, rng)

    return base.Weighting(init, update)


def no_state(num_tasks: int) -> tuple:
    del num_tasks
    return ()
