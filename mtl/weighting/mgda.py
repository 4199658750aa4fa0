"""MGDA(-UB): the min-norm point of the convex hull of the task gradients."""

from __future__ import annotations

import jax.numpy as jnp

from mtl.errors import ConfigError
from mtl.weighting import base, gradients, simplex

NORMALIZATIONS = ("none", "l2", "loss", "loss+")


def mgda(
    wrt: str = "representation", normalization: str = "none", iters: int = 250
) -> base.Weighting:
    """MGDA (Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018).

    Weights `w = argmin_{w in simplex} |sum_t w_t g_t / n_t|^2`, found by accelerated
    projected gradient (`simplex.min_norm_weights`, `iters` steps) instead of the paper's
    Frank-Wolfe; the shared gradient is `sum_t w_t g_t` (the paper's `scale[t]` times each
    loss). The default `wrt="representation"` is MGDA-UB: `g_t` are the gradients at the shared
    representation of the whole batch (flattened, as the official code), so the trunk takes one
    backward pass. `normalization` divides `g_t` by `n_t` before the solve: `none`, `l2`
    (|g_t|), `loss` (L_t) or `loss+` (L_t |g_t|), the official code's options.

    Deviation from LibMTL: LibMTL sums the representation gradients over the batch before the
    solve and, with parameter gradients, combines the normalised gradients; we follow the paper.
    """
    gradients.check_wrt("mgda", wrt)
    if normalization not in NORMALIZATIONS:
        raise ConfigError(
            f"mgda: normalization must be one of {NORMALIZATIONS}, got {normalization!r} "
            "(config field weighting.mgda.normalization)."
        )
    if iters < 1:
        raise ConfigError(f"mgda: iters must be >= 1, got {iters}.")

    def solve(k, losses, state, rng):
        norms = jnp.sqrt(jnp.maximum(jnp.diag(k), 0.0))
        n = {
            "none": jnp.ones_like(losses),
            "l2": norms,
            "loss": losses,
            "loss+": losses * norms,
        }[normalization]
        n = jnp.maximum(n, 1e-12)
        return simplex.min_norm_weights(k / jnp.outer(n, n), iters), state

    return gradients.gradient_method(gradients.no_state, solve, wrt)
