"""Small jit-able solvers over the probability simplex, for T x T task problems.

The gradient methods reduce to problems in T (number of tasks) variables given the Gram matrix
`K = G G^T`. Python solvers (scipy's SLSQP in LibMTL, cvxpy in Nash-MTL's code) force a
device-to-host copy every step; these are fixed-iteration loops that stay inside the jitted
train step. Tests check them against scipy and brute force.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


def project(v: jax.Array) -> jax.Array:
    """Euclidean projection of `v` [T] onto {w >= 0, sum(w) = 1} (sort-based; Duchi et al. 2008)."""
    u = jnp.sort(v)[::-1]
    css = jnp.cumsum(u) - 1.0
    idx = jnp.arange(1, v.shape[0] + 1, dtype=v.dtype)
    rho = jnp.sum((u - css / idx) > 0)
    theta = css[rho - 1] / rho.astype(v.dtype)
    return jnp.maximum(v - theta, 0.0)


def largest_eigenvalue(k: jax.Array) -> jax.Array:
    return jnp.linalg.eigvalsh(k)[-1]


def min_norm_weights(k: jax.Array, iters: int = 250) -> jax.Array:
    """argmin over the simplex of `w^T K w` (MGDA's min-norm point of the convex hull).

    Accelerated projected gradient (FISTA) with step 1/lambda_max(K): the objective is smooth
    with that Lipschitz constant, so no line search is needed and the error falls as 1/k^2.
    """
    num = k.shape[0]
    scale = jnp.maximum(jnp.max(jnp.diag(k)), 1e-20)
    k = k / scale  # scale-free: the weights don't depend on the gradients' magnitude
    step = 1.0 / jnp.maximum(largest_eigenvalue(k), 1e-12)
    w0 = jnp.full((num,), 1.0 / num, k.dtype)

    def body(i, carry):
        w, y = carry
        w_next = project(y - step * (k @ y))
        y = w_next + (i / (i + 3.0)) * (w_next - w)
        return w_next, y

    w, _ = jax.lax.fori_loop(0, iters, body, (w0, w0))
    return w


def majorized_descent(
    value_and_grad: Callable[[jax.Array], tuple[jax.Array, jax.Array, jax.Array]],
    w0: jax.Array,
    iters: int,
) -> jax.Array:
    """Accelerated projected gradient `w <- P(y - g(y) / L(y))` with a local Lipschitz bound.

    `value_and_grad(w) -> (value, grad, lipschitz)`. For an objective with a concave-majorised
    part (CAGrad's `c * sqrt(w^T K w)`), `L(w)` bounds the curvature of the quadratic
    majoriser at `w`, so a plain step decreases the objective (majorise-minimise). Nesterov
    momentum speeds up the ill-conditioned cases and is reset whenever the objective goes up
    (adaptive restart, O'Donoghue & Candes 2015). The best iterate is returned.
    """

    def body(_, carry):
        w, y, t, v_w, best_w, best_v = carry
        _, g, lipschitz = value_and_grad(y)
        w_next = project(y - g / lipschitz)
        v_next, _, _ = value_and_grad(w_next)
        restart = v_next > v_w
        t_next = jnp.where(restart, 1.0, (1.0 + jnp.sqrt(1.0 + 4.0 * t * t)) / 2.0)
        y_next = jnp.where(restart, w_next, w_next + ((t - 1.0) / t_next) * (w_next - w))
        better = v_next < best_v
        best_w = jnp.where(better, w_next, best_w)
        best_v = jnp.where(better, v_next, best_v)
        return w_next, y_next, t_next, v_next, best_w, best_v

    v0, _, _ = value_and_grad(w0)
    one = jnp.ones((), w0.dtype)
    carry = (w0, w0, one, v0, w0, v0)
    return jax.lax.fori_loop(0, iters, body, carry)[4]
