"""Uncertainty weighting (UW) with learnable homoscedastic log-variances."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from mtl.errors import ConfigError
from mtl.weighting import base


class UncertaintyState(NamedTuple):
    log_vars: jax.Array  # s, [T]
    opt_state: optax.OptState


def _uw_objective(losses: jax.Array, log_vars: jax.Array) -> jax.Array:
    return jnp.sum(losses / (2.0 * jnp.exp(log_vars)) + log_vars / 2.0)


def uncertainty(lr: float = 1e-3, init_log_var: float = 0.0) -> base.Weighting:
    """UW (Kendall et al., "Multi-Task Learning Using Uncertainty to Weigh Losses", CVPR 2018).

    LibMTL's form `sum_t loss_t / (2 exp(s_t)) + s_t / 2` with learnable log-variances `s`. The
    model gradient is that of this expression, so the effective weights are `1 / (2 exp(s))`;
    `s` follows the gradient of the same expression with its own Adam(`lr`).

    Deviations from LibMTL: `s` starts at `init_log_var` = 0 (LibMTL starts at -0.5; pass
    `init_log_var=-0.5` to match) and has its own optimizer instead of sharing the model's.
    """
    if lr <= 0:
        raise ConfigError(f"uncertainty: lr must be > 0, got {lr}.")
    opt = optax.adam(lr)

    def init(num_tasks: int) -> UncertaintyState:
        log_vars = jnp.full((num_tasks,), init_log_var, jnp.float32)
        return UncertaintyState(log_vars, opt.init(log_vars))

    def update(
        objective: base.TaskObjective, state: UncertaintyState, rng: jax.Array
    ) -> tuple[base.Update, UncertaintyState]:
        del rng
        update = base.weighted_update(objective, 1.0 / (2.0 * jnp.exp(state.log_vars)))
        losses = jax.lax.stop_gradient(update.losses).astype(state.log_vars.dtype)
        s_grad = jax.grad(_uw_objective, argnums=1)(losses, state.log_vars)
        steps, opt_state = opt.update(s_grad, state.opt_state, state.log_vars)
        return update, UncertaintyState(optax.apply_updates(state.log_vars, steps), opt_state)

    return base.Weighting(init, update)
