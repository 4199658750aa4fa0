"""DB-MTL: log losses, and running per-task gradients rescaled to the largest norm."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from mtl.errors import ConfigError
from mtl.weighting import base, gradients

EPS = 1e-8  # as LibMTL


class DBMTLState(NamedTuple):
    step: jax.Array  # int32: updates done
    grads: Any  # the running per-task gradients: the shared parameters with a leading [T] axis


def db_mtl(beta: float = 0.9, beta_sigma: float = 0.5) -> base.Weighting:
    """DB-MTL (Lin et al., "Dual-Balancing for Multi-Task Learning", 2023), as LibMTL's `DB_MTL`
    (defaults `DB_beta=0.9`, `DB_beta_sigma=0.5`).

    Loss-scale balancing: every task's loss enters as `log(L_t + 1e-8)`. Gradient-magnitude
    balancing: the per-task gradients `g_t` of those log losses for the shared parameters update
    running averages `m_t <- g_t + beta / k^beta_sigma (m_t - g_t)` at step k (from zeros), and
    the shared gradient is `sum_t (max_s |m_s| / |m_t|) m_t`: every task contributes as much as
    the largest. The heads get the gradient of their own log loss. `Update.weights` reports the
    factors `max_s |m_s| / |m_t|`.

    The running averages are state shaped like the shared parameters times T, so the state is
    built by `base.initial_state(method, T, shared)`; like LibMTL this works on the shared
    parameters only (no representation variant: the representation changes with every batch).
    """
    if not 0 <= beta < 1:
        raise ConfigError(f"db_mtl: beta must be in [0, 1), got {beta} (weighting.db_mtl.beta).")
    if beta_sigma < 0:
        raise ConfigError(
            f"db_mtl: beta_sigma must be >= 0, got {beta_sigma} (weighting.db_mtl.beta_sigma)."
        )

    def init(num_tasks: int) -> DBMTLState:
        raise ConfigError(
            "db_mtl keeps running gradients shaped like the shared parameters: build its state "
            "with mtl.weighting.initial_state(method, num_tasks, shared_params)."
        )

    def init_for_shared(num_tasks: int, shared: Any) -> DBMTLState:
        grads = jax.tree.map(lambda p: jnp.zeros((num_tasks, *p.shape), p.dtype), shared)
        return DBMTLState(jnp.zeros((), jnp.int32), grads)

    def update(
        objective: base.TaskObjective, state: DBMTLState, rng: jax.Array
    ) -> tuple[base.Update, DBMTLState]:
        del rng

        def log_losses(task_specific, z):
            losses, aux = objective.task_losses(task_specific, z)
            return jnp.log(losses + EPS), (aux, losses)

        per_task, task_grads, out = base.per_task_shared_grads(
            objective._replace(task_losses=log_losses)
        )
        step = state.step + 1
        decay = beta / step.astype(jnp.float32) ** beta_sigma
        running = jax.tree.map(
            lambda g, m: g + (decay * (m - g)).astype(g.dtype), per_task, state.grads
        )
        norms = jnp.sqrt(gradients.task_squared_norms(running))
        factors = jnp.max(norms) / (norms + EPS)
        task_aux, losses = out.task_aux
        update = out._replace(
            shared_grads=gradients.combine(factors, running),
            task_grads=task_grads,
            losses=losses,
            weights=factors,
            task_aux=task_aux,
        )
        return update, DBMTLState(step, running)

    return base.Weighting(init, update, init_for_shared=init_for_shared)
