"""UPGrad, IMTL-G, FairGrad, STCH and DB-MTL: hand-computed cases, TorchJD and the papers' code."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torchjd.aggregation import FairGradWeighting, IMTLGWeighting, UPGradWeighting

from mtl.errors import ConfigError
from mtl.weighting import base, db_mtl, fairgrad, get_weighting, imtl_g, stch, upgrad
from mtl.weighting.fairgrad import fairgrad_weights
from mtl.weighting.imtl_g import imtl_g_weights
from mtl.weighting.upgrad import upgrad_weights
from tests.test_gradient_methods import linear_objective
from tests.test_weighting import (
    RNG,
    TASKS,
    assert_tree_close,
    loop_grads,
    make_objective,
    make_problem,
    total_losses,
)


def random_grams(count: int = 15, seed: int = 0):
    """Gram matrices of random gradients: 2-12 tasks, conflicting pairs, duplicated rows, more
    tasks than dimensions, scales from 1e-4 to 1e3."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        tasks, dims = int(rng.integers(2, 13)), int(rng.integers(2, 40))
        g = rng.normal(size=(tasks, dims)) * 10 ** rng.uniform(-4, 3)
        if i % 3 == 0:
            g[1] = -g[0] * rng.uniform(0.5, 1.5) + 0.1 * g[1]
        if i % 5 == 0:
            g[-1] = g[0]
        yield g, g @ g.T


def combined(weights, g):
    return np.asarray(weights, np.float64) @ g


# --- UPGrad ------------------------------------------------------------------------------------


def test_upgrad_hand_computed_pair():
    """g1 = (1, 0), g2 = (-1, 1) conflict: g1 projected off g2 is (.5, .5), g2 off g1 is (0, 1);
    UPGrad is their mean. Orthogonal gradients are left alone."""
    g = np.array([[1.0, 0.0], [-1.0, 1.0]])
    w = upgrad_weights(jnp.asarray(g @ g.T, jnp.float32))
    np.testing.assert_allclose(combined(w, g), [0.25, 0.75], atol=1e-3)  # reg_eps moves it a bit
    g = np.array([[3.0, 0.0], [0.0, 0.5]])
    np.testing.assert_allclose(upgrad_weights(jnp.asarray(g @ g.T, jnp.float32)), [0.5, 0.5], 1e-4)


def test_upgrad_matches_torchjd_and_conflicts_with_no_task():
    for g, k in random_grams():
        ours = np.asarray(jax.jit(upgrad_weights)(jnp.asarray(k, jnp.float32)), np.float64)
        ref = UPGradWeighting()(torch.tensor(k)).numpy()
        np.testing.assert_allclose(ours, ref, atol=1e-3 * np.max(np.abs(ref)))
        # No task's loss goes up to first order, up to what the regularisation (TorchJD's too)
        # allows when the gradients are linearly dependent.
        slack = np.minimum(g @ combined(ref, g), 0.0) - 1e-3 * np.trace(k)
        assert np.all(g @ combined(ours, g) >= slack)


# --- IMTL-G ------------------------------------------------------------------------------------


def test_imtl_g_hand_computed_pair():
    """g1 = (1, 0), g2 = (0, 2): K^-1 |g| = (1, 1/2), so w = (2/3, 1/3) and the update
    (2/3, 2/3) projects equally, 2/3, onto both unit gradients."""
    g = np.array([[1.0, 0.0], [0.0, 2.0]])
    w = imtl_g_weights(jnp.asarray(g @ g.T, jnp.float32))
    np.testing.assert_allclose(w, [2 / 3, 1 / 3], 1e-6)
    units = g / np.linalg.norm(g, axis=1, keepdims=True)
    np.testing.assert_allclose(units @ combined(w, g), [2 / 3, 2 / 3], 1e-6)


def test_imtl_g_matches_torchjd_on_independent_and_duplicated_gradients():
    rng = np.random.default_rng(1)
    for tasks in (2, 3, 6):
        g = rng.normal(size=(tasks, 20))
        g[-1] = g[0] if tasks == 6 else g[-1]  # a duplicated task: the pseudo-inverse case
        k = g @ g.T
        ours = imtl_g_weights(jnp.asarray(k, jnp.float32))
        np.testing.assert_allclose(ours, IMTLGWeighting()(torch.tensor(k)).numpy(), 1e-4, 1e-5)
        units = g / np.linalg.norm(g, axis=1, keepdims=True)
        projections = units @ combined(ours, g)
        np.testing.assert_allclose(projections, projections[0], 1e-4)


# --- FairGrad ----------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [1.0, 2.0])
def test_fairgrad_hand_computed_orthogonal_pair(alpha):
    """K = diag(1, 4): K w = w^(-1/alpha) gives w = (1, 4^(-alpha/(alpha+1)))."""
    k = jnp.diag(jnp.array([1.0, 4.0]))
    expected = [1.0, 4.0 ** (-alpha / (alpha + 1.0))]
    np.testing.assert_allclose(fairgrad_weights(k, alpha), expected, 1e-5)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 5.0])
def test_fairgrad_solves_its_condition_and_matches_torchjd(alpha):
    for g, k in random_grams(count=12, seed=2):
        if np.linalg.matrix_rank(g) < len(g) or np.linalg.cond(k) > 1e4:
            continue  # the solution is only defined up to the ridge there
        ours = jax.jit(fairgrad_weights, static_argnums=1)(jnp.asarray(k, jnp.float32), alpha)
        ours = np.asarray(ours, np.float64)
        residual = k @ ours - ours ** (-1 / alpha)  # zero, up to float32 cancellation in K w
        assert np.max(np.abs(residual)) <= 5e-3 * np.max(np.abs(k) @ ours)
        ref = FairGradWeighting(alpha)(torch.tensor(k)).numpy()
        ref_residual = k @ ref - ref ** (-1 / alpha)
        if np.max(np.abs(ref_residual)) <= 1e-6 * np.max(ref ** (-1 / alpha)):  # scipy converged
            np.testing.assert_allclose(ours, ref, rtol=3e-3, atol=1e-4 * np.max(ref))


def test_fairgrad_update_is_t_times_the_weighted_gradients():
    g = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]], np.float32)
    update, _ = fairgrad().update(linear_objective(g), (), RNG)
    w = np.array([1.0, 0.5])  # alpha = 1: K w = 1 / w with K = diag(1, 4)
    np.testing.assert_allclose(update.weights, 2 * w, 1e-5)
    np.testing.assert_allclose(update.shared_grads, 2 * w @ g, 1e-5)


@pytest.mark.parametrize(
    "make",
    [lambda: upgrad(), lambda: imtl_g(wrt="representation"), lambda: fairgrad(alpha=2.0)],
)
def test_gram_methods_on_the_toy_model_give_their_weights_update(make):
    """Through a real trunk: the shared gradient is `sum_t w_t g_t` with the reported weights."""
    params, data = make_problem()
    update, _ = make().update(make_objective(params, data), (), RNG)
    shared = jax.grad(
        lambda s: jnp.dot(update.weights, total_losses({**params, "shared": s}, data))
    )(params["shared"])
    assert_tree_close(update.shared_grads, shared, 1e-4, 1e-5)
    assert_tree_close(update.task_grads, loop_grads(params, data, np.ones(3))["heads"])


# --- STCH --------------------------------------------------------------------------------------


def np_stch_weights(losses, nadir, mu):
    """d/dL of the official STCH loss, `T mu log sum exp(log(L / n + 1e-20) / mu)`."""
    r = np.log(losses / nadir + 1e-20) / mu
    s = np.exp(r - r.max()) / np.exp(r - r.max()).sum()
    return len(losses) * s / (losses + 1e-20 * nadir)


def test_stch_log_losses_then_nadir_then_smooth_tchebycheff():
    """warmup=1, window=2: step 0 and the averaging steps 1-2 weight 1/L; from step 3 on the
    weights are STCH's with the nadir point the mean of the losses of steps 1 and 2."""
    params, data = make_problem()
    method = stch(mu=0.5, warmup=1, window=2)
    state = base.initial_state(method, 3, params["shared"])
    scales = [1.0, 2.0, 4.0, 1.0, 0.5]
    base_losses = np.asarray(total_losses(params, data), np.float64)
    for step, scale in enumerate(scales):
        losses = base_losses * scale
        update, state = method.update(make_objective(params, data, scale), state, RNG)
        if step < 3:
            expected = 1.0 / losses
        else:
            nadir = base_losses * (2.0 + 4.0) / 2
            expected = np_stch_weights(losses, nadir, 0.5)
        np.testing.assert_allclose(update.weights, expected, 1e-5)
        ref = loop_grads(params, data, expected * scale)  # the loss itself is scaled
        assert_tree_close(update.shared_grads, ref["shared"], 1e-4, 1e-6)
    np.testing.assert_allclose(state.nadir, base_losses * 3.0, 1e-5)


# --- DB-MTL ------------------------------------------------------------------------------------


def test_db_mtl_matches_the_libmtl_loop():
    """Three steps of LibMTL's `DB_MTL.backward` written out with one `jax.grad` per task."""
    params, data = make_problem()
    method = db_mtl(beta=0.9, beta_sigma=0.5)
    state = base.initial_state(method, 3, params["shared"])
    buffer = 0.0  # LibMTL's grad_buffer starts at zeros
    for step, scale in enumerate([1.0, 0.5, 2.0], start=1):
        update, state = method.update(make_objective(params, data, scale), state, RNG)

        def log_loss(shared, t, scale=scale):
            return jnp.log(total_losses({**params, "shared": shared}, data)[t] * scale + 1e-8)

        rows = []
        for t in range(len(TASKS)):
            g = jax.grad(log_loss)(params["shared"], t)
            rows.append(np.concatenate([np.ravel(x) for x in jax.tree.leaves(g)]))
        grads = np.asarray(rows, np.float64)
        buffer = grads + (0.9 / step**0.5) * (buffer - grads)
        norms = np.linalg.norm(buffer, axis=1)
        alpha = norms.max() / (norms + 1e-8)
        np.testing.assert_allclose(update.weights, alpha, 1e-4)
        flat = np.concatenate([np.ravel(x) for x in jax.tree.leaves(update.shared_grads)])
        np.testing.assert_allclose(flat, alpha @ buffer, 1e-4, 1e-6)
        heads = jax.grad(
            lambda h, scale=scale: jnp.sum(
                jnp.log(total_losses({**params, "heads": h}, data) * scale + 1e-8)
            )
        )(params["heads"])
        assert_tree_close(update.task_grads, heads, 1e-5, 1e-6)
        np.testing.assert_allclose(update.losses, total_losses(params, data) * scale, 1e-6)


def test_db_mtl_state_needs_the_shared_parameters():
    with pytest.raises(ConfigError, match="initial_state"):
        db_mtl().init(3)


def test_bad_options_name_their_config_field():
    for name, options, field in [
        ("upgrad", {"rounds": 0}, "weighting.upgrad.rounds"),
        ("fairgrad", {"alpha": 0.0}, "weighting.fairgrad.alpha"),
        ("stch", {"mu": -1.0}, "weighting.stch.mu"),
        ("stch", {"window": 0}, "weighting.stch.window"),
        ("db_mtl", {"beta": 1.0}, "weighting.db_mtl.beta"),
        ("imtl_g", {"wrt": "trunk"}, "weighting.imtl_g.wrt"),
    ]:
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
            get_weighting(name, options)
