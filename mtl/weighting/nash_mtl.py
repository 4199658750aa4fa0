"""Nash-MTL: the Nash bargaining solution between the tasks."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mtl.errors import ConfigError
from mtl.weighting import base, gradients


def nash_weights(k: jax.Array, iters: int = 20, ridge: float = 1e-6) -> jax.Array:
    """The `alpha > 0` with `K alpha = 1 / alpha` (Navon et al. 2022, Eq. 3).

    That condition is the stationarity condition of the strictly convex
    `f(alpha) = alpha^T K alpha / 2 - sum_t log(alpha_t)`, so it has one solution (for K positive
    definite; `ridge * mean(diag K)` is added to the diagonal so that linearly dependent
    gradients keep it so). `f` is self-concordant, so damped Newton steps (step
    `1 / (1 + lambda)` while the Newton decrement `lambda` is large) stay positive and converge
    quadratically: `iters` steps with no line search, jit-able. The official code instead
    solves a sequence of cvxpy problems (ECOS, at most 20) on the host.
    """
    num = k.shape[0]
    k = k + ridge * jnp.mean(jnp.diag(k)) * jnp.eye(num, dtype=k.dtype)
    # Start on the ray alpha = s * 1 at its minimiser s^2 = T / 1^T K 1.
    alpha0 = jnp.full((num,), jnp.sqrt(num / jnp.maximum(jnp.sum(k), 1e-20)), k.dtype)

    def body(_, alpha):
        grad = k @ alpha - 1.0 / alpha
        hess = k + jnp.diag(1.0 / alpha**2)
        step = jnp.linalg.solve(hess, grad)
        decrement = jnp.sqrt(jnp.maximum(grad @ step, 0.0))
        size = jnp.where(decrement > 0.25, 1.0 / (1.0 + decrement), 1.0)
        return alpha - size * step

    return jax.lax.fori_loop(0, iters, body, alpha0)


def nash_mtl(wrt: str = "shared", iters: int = 20) -> base.Weighting:
    """Nash-MTL (Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022), as the
    official code (AvivNavon/nash-mtl, `NashMTL`) with `update_weights_every=1`.

    `K = G G^T` is divided by its Frobenius norm `n` first (as the official code), the weights
    `alpha` solve `(K / n) alpha = 1 / alpha` (`nash_weights`), and the shared gradient is
    `sum_t alpha_t g_t`. The official `max_norm=1` gradient clipping belongs to the model
    optimizer here (`--config.optimizer.grad_clip_norm=1`).
    """
    gradients.check_wrt("nash_mtl", wrt)
    if iters < 1:
        raise ConfigError(f"nash_mtl: iters must be >= 1, got {iters}.")

    def solve(k, losses, state, rng):
        norm = jnp.maximum(jnp.linalg.norm(k), 1e-20)
        return nash_weights(k / norm, iters), state

    return gradients.gradient_method(gradients.no_state, solve, wrt)
