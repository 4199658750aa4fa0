"""CAGrad: conflict-averse gradient descent."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mtl.errors import ConfigError
from mtl.weighting import base, gradients, simplex

RESCALES = (0, 1, 2)


def cagrad_weights(k: jax.Array, alpha: float, iters: int) -> jax.Array:
    """The simplex weights `w` of CAGrad's dual: argmin `w^T K 1/T + c sqrt(w^T K w)`.

    `c = alpha * |g_0|` with `g_0` the mean gradient. Solved by majorise-minimise projected
    gradient (`simplex.majorized_descent`); LibMTL calls scipy's SLSQP here.
    """
    num = k.shape[0]
    scale = jnp.maximum(jnp.mean(jnp.diag(k)), 1e-20)
    k = k / scale  # the weights are invariant to the gradients' scale
    a = k @ jnp.full((num,), 1.0 / num, k.dtype)
    c = alpha * jnp.sqrt(jnp.mean(k) + 1e-8)
    lam_max = jnp.maximum(simplex.largest_eigenvalue(k), 1e-12)

    def value_and_grad(w):
        kw = k @ w
        r = jnp.sqrt(w @ kw + 1e-8)
        value = w @ a + c * r
        # sqrt(q) <= sqrt(q_k) + (q - q_k) / (2 sqrt(q_k)): a quadratic majoriser with
        # curvature c * lambda_max / r.
        return value, a + c * kw / r, c * lam_max / r + 1e-12

    return simplex.majorized_descent(value_and_grad, jnp.full((num,), 1.0 / num, k.dtype), iters)


def cagrad(
    alpha: float = 0.5, rescale: int = 1, wrt: str = "shared", iters: int = 200
) -> base.Weighting:
    """CAGrad (Liu et al., "Conflict-Averse Gradient Descent for Multi-task Learning", NeurIPS
    2021), as LibMTL's `CAGrad` (defaults `calpha=0.5`, `rescale=1`).

    With `w` from `cagrad_weights`, `g_w = G^T w` and `c = alpha |g_0|`, the update is
    `d = g_0 + c / |g_w| g_w` with `g_0 = mean_t g_t`, divided by `1 + alpha^2` (`rescale=1`),
    `1 + alpha` (`rescale=2`) or not at all (`rescale=0`). As weights on the task gradients:
    `(1/T + c w / |g_w|) / rescale`.
    """
    gradients.check_wrt("cagrad", wrt)
    if alpha < 0:
        raise ConfigError(f"cagrad: alpha must be >= 0, got {alpha}.")
    if rescale not in RESCALES:
        raise ConfigError(f"cagrad: rescale must be one of {RESCALES}, got {rescale}.")
    divisor = {0: 1.0, 1: 1.0 + alpha**2, 2: 1.0 + alpha}[rescale]

    def solve(k, losses, state, rng):
        num = k.shape[0]
        w = cagrad_weights(k, alpha, iters)
        c = alpha * jnp.sqrt(jnp.mean(k) + 1e-8)
        gw_norm = jnp.sqrt(jnp.maximum(w @ k @ w, 0.0))
        weights = (1.0 / num + c / (gw_norm + 1e-8) * w) / divisor
        return weights, state

    return gradients.gradient_method(gradients.no_state, solve, wrt)
