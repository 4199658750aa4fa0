"""FairGrad: alpha-fair allocation of the update between the tasks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mtl.errors import ConfigError
from mtl.weighting import base, gradients

# The line search tries these fractions of the Newton step. NumPy, not jnp: a JAX array made at
# import would start the backend before a multi-process run can call jax.distributed.initialize.
STEP_SIZES = 0.5 ** np.arange(20.0)


def fairgrad_weights(k: jax.Array, alpha: float, iters: int = 30) -> jax.Array:
    """The `w > 0` with `K w = w^(-1/alpha)` (Ban & Ji 2024, Eq. 4).

    It is the stationary point of the strictly convex `f(w) = w^T K w / 2 - sum_t h(w_t)`,
    `h' = w^(-1/alpha)`, so it is unique (for K positive definite; `1e-7 * mean(diag K)` is
    added to the diagonal so that dependent gradients keep it so). Found by `iters` Newton steps
    on the scale-free problem (`K / mean(diag K)`, rescaled at the end), each with a line search
    over `STEP_SIZES` that keeps `w` positive: jit-able, no host solver. The official code calls
    `scipy.optimize.least_squares` on the host.
    """
    num = k.shape[0]
    scale = jnp.maximum(jnp.mean(jnp.diag(k)), 1e-20)
    kn = k / scale + 1e-7 * jnp.eye(num, dtype=k.dtype)
    power = 1.0 - 1.0 / alpha

    def h(w):  # an antiderivative of w^(-1/alpha)
        return jnp.log(w) if alpha == 1.0 else w**power / power

    def f(w):
        return 0.5 * w @ kn @ w - jnp.sum(h(w))

    def body(_, w):
        grad = kn @ w - w ** (-1.0 / alpha)
        hess = kn + jnp.diag(w ** (-1.0 / alpha - 1.0) / alpha)
        step = jnp.linalg.solve(hess, grad)
        trials = w[None, :] - jnp.asarray(STEP_SIZES, w.dtype)[:, None] * step[None, :]
        feasible = jnp.all(trials > 0, axis=1)
        safe = jnp.where(feasible[:, None], trials, 1.0)  # keep log and powers finite
        values = jnp.where(feasible, jax.vmap(f)(safe), jnp.inf)
        best = jnp.argmin(values)
        return jnp.where(values[best] < f(w), trials[best], w)

    # Start on the ray w = s 1 where the condition holds on average: s^(1 + 1/alpha) = T / 1^T K 1.
    start = (num / jnp.maximum(jnp.sum(kn), 1e-20)) ** (alpha / (alpha + 1.0))
    w = jax.lax.fori_loop(0, iters, body, jnp.full((num,), start, k.dtype))
    # K = scale * kn: w = c * x solves K w = w^(-1/alpha) when scale * c = c^(-1/alpha).
    return w * scale ** (-alpha / (alpha + 1.0))


def fairgrad(alpha: float = 1.0, wrt: str = "shared", iters: int = 30) -> base.Weighting:
    """FairGrad (Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024), as the
    official code (OptMN-Lab/fairgrad, `FairGrad`): the shared gradient is `T sum_t w_t g_t`
    with `w = fairgrad_weights(G G^T, alpha)` (the official code multiplies by T "to match the
    sum loss"; TorchJD's `FairGrad` does not). `alpha=1` is proportional fairness, larger
    `alpha` moves towards max-min fairness. The official `max_norm=1` gradient clipping belongs
    to the model optimizer here (`--config.optimizer.grad_clip_norm=1`).
    """
    gradients.check_wrt("fairgrad", wrt)
    if alpha <= 0:
        raise ConfigError(
            f"fairgrad: alpha must be > 0, got {alpha} (weighting.fairgrad.alpha); alpha = 0 is "
            "equal weighting (--config.weighting.name=equal)."
        )
    if iters < 1:
        raise ConfigError(f"fairgrad: iters must be >= 1, got {iters} (weighting.fairgrad.iters).")

    def solve(k, losses, state, rng):
        return k.shape[0] * fairgrad_weights(k, alpha, iters), state

    return gradients.gradient_method(gradients.no_state, solve, wrt)
