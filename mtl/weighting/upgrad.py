"""UPGrad: project every task's gradient onto the dual cone of all of them, then average."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mtl.errors import ConfigError
from mtl.weighting import base, gradients


def dual_cone_weights(k: jax.Array, u: jax.Array, rounds: int) -> jax.Array:
    """`argmin_v v^T K v` subject to `v >= u`, for `K` positive definite.

    That is the dual of projecting `G^T u` onto the dual cone `{x : G x >= 0}` of the gradients:
    the projection is `G^T v` (Quinton & Rey 2024, Proposition 1). The optimality conditions
    are a linear complementarity problem: `v >= u`, `K v >= 0`, `(v - u) . K v = 0`. Given which
    constraints are active (`v_i = u_i`) the rest is one linear solve (`(K v)_i = 0` where
    free), so we search over active sets by principal pivoting (Judice & Pires 1994): every
    round moves all indices that break a condition to the other set, or only the first of them
    (Murty's rule, which terminates for positive definite `K`) when the number of broken
    conditions did not fall. It stops when no condition is broken, after at most `rounds` rounds.
    """
    num = k.shape[0]
    eye = jnp.eye(num, dtype=k.dtype)
    tol = 1e-6 * jnp.max(jnp.abs(u))

    def solve(free):
        system = jnp.where(free[:, None], k, eye)
        return jnp.linalg.solve(system, jnp.where(free, 0.0, u))

    def broken(free, v):
        return jnp.where(free, v < u - tol, (k @ v) < -tol * jnp.max(jnp.diag(k)))

    def cond(carry):
        i, free, v, _ = carry
        return (i < rounds) & jnp.any(broken(free, v))

    def body(carry):
        i, free, v, best = carry
        bad = broken(free, v)
        count = jnp.sum(bad)
        first = jnp.arange(num) == jnp.argmax(bad)
        free = free ^ jnp.where(count < best, bad, bad & first)
        return i + 1, free, solve(free), jnp.minimum(best, count)

    free = jnp.zeros((num,), bool)  # start with every constraint active: v = u
    _, _, v, _ = jax.lax.while_loop(cond, body, (0, free, u, jnp.asarray(num + 1)))
    return jnp.maximum(v, u)


def upgrad_weights(
    k: jax.Array, rounds: int = 50, norm_eps: float = 1e-4, reg_eps: float = 1e-4
) -> jax.Array:
    """UPGrad's weights on the task gradients: `sum_i v_i`, `v_i` the dual-cone weights of
    `e_i / T` (`dual_cone_weights`), as TorchJD's `UPGradWeighting` with its default
    preference vector and projector: `K` divided by its trace (zero when the trace is below
    `norm_eps`), then `reg_eps` added to its diagonal."""
    num = k.shape[0]
    trace = jnp.trace(k)
    k = jnp.where(trace < norm_eps, jnp.zeros_like(k), k / jnp.maximum(trace, norm_eps))
    k = k + reg_eps * jnp.eye(num, dtype=k.dtype)
    units = jnp.eye(num, dtype=k.dtype) / num
    return jnp.sum(jax.vmap(lambda u: dual_cone_weights(k, u, rounds))(units), axis=0)


def upgrad(wrt: str = "shared", rounds: int = 50) -> base.Weighting:
    """UPGrad (Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024), as
    TorchJD's `UPGrad()` aggregator: every task's gradient is projected onto the dual cone of
    all task gradients (the directions that increase no loss to first order) and the
    projections are averaged. The result is `sum_t w_t g_t` with `w = upgrad_weights(G G^T)`;
    TorchJD solves each projection with quadprog on the host, we by at most `rounds` rounds of
    principal pivoting inside the jitted step (tests compare the two).
    `wrt="representation"` applies it to the gradients at the shared representation.
    """
    gradients.check_wrt("upgrad", wrt)
    if rounds < 1:
        raise ConfigError(f"upgrad: rounds must be >= 1, got {rounds} (weighting.upgrad.rounds).")

    def solve(k, losses, state, rng):
        return upgrad_weights(k, rounds), state

    return gradients.gradient_method(gradients.no_state, solve, wrt)
