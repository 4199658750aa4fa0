"""Per-task-gradient methods against hand-written references, brute force and scipy."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.optimize
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mtl.errors import ConfigError
from mtl.weighting import (
    aligned_mtl,
    base,
    cagrad,
    get_weighting,
    gradients,
    mgda,
    nash_mtl,
    pcgrad,
    simplex,
)
from mtl.weighting.aligned_mtl import aligned_weights
from mtl.weighting.nash_mtl import nash_weights
from mtl.weighting.pcgrad import pcgrad_coefficients
from tests.test_weighting import (
    RNG,
    TASKS,
    assert_tree_close,
    make_objective,
    make_problem,
    make_train_step,
    representation,
    task_losses,
    total_losses,
)


def linear_objective(g: np.ndarray) -> base.TaskObjective:
    """Losses `G theta` of a shared vector theta: task t's gradient is exactly row t of G."""
    g = jnp.asarray(g, jnp.float32)
    return base.TaskObjective(
        shared=jnp.zeros(g.shape[1]),
        task_specific={},
        representation=lambda theta: (theta, {}),
        task_losses=lambda heads, z: (g @ z, {}),
    )


def per_task_reference(params, data, wrt):
    """Rows of G, one `jax.grad` per task: shared parameters or representation (flattened)."""
    rows = []
    for t in range(len(TASKS)):
        if wrt == "shared":
            g = jax.grad(lambda s, t=t: total_losses({**params, "shared": s}, data)[t])(
                params["shared"]
            )
        else:
            z, _ = representation(params["shared"], data)
            g = jax.grad(lambda z_, t=t: task_losses(params["heads"], z_, data)[0][t])(z)
        rows.append(np.concatenate([np.ravel(x) for x in jax.tree.leaves(g)]))
    return np.asarray(rows, np.float64)


def expected_shared_grads(params, data, weights):
    """Gradient of the shared parameters of `sum_t w_t L_t`; the heads get the plain sum."""
    fn = lambda s: jnp.dot(
        jnp.asarray(weights, jnp.float32), total_losses({**params, "shared": s}, data)
    )  # noqa: E501
    heads = jax.grad(lambda h: jnp.sum(total_losses({**params, "heads": h}, data)))(params["heads"])
    return jax.grad(fn)(params["shared"]), heads


def check_update(update, params, data, weights, rtol=1e-4):
    shared, heads = expected_shared_grads(params, data, weights)
    assert_tree_close(update.shared_grads, shared, rtol, 1e-5)
    assert_tree_close(update.task_grads, heads, 1e-5, 1e-6)


# --- PCGrad ------------------------------------------------------------------------------------


def np_pcgrad(g: np.ndarray, orders) -> np.ndarray:
    """The official PCGrad loop, written out on explicit gradient vectors."""
    out = []
    for i in range(len(g)):
        gi = g[i].copy()
        for j in orders[i]:
            dot = gi @ g[j]
            if dot < 0:
                gi -= dot / (g[j] @ g[j] + 1e-8) * g[j]
        out.append(gi)
    return np.sum(out, axis=0)


def test_pcgrad_conflicting_and_non_conflicting_pairs():
    method = pcgrad(shuffle=False)
    # Conflicting: each is projected off the other: (1,0)+.5(-1,1) and (-1,1)+(1,0).
    update, _ = method.update(linear_objective([[1.0, 0.0], [-1.0, 1.0]]), (), RNG)
    np.testing.assert_allclose(update.shared_grads, [0.5, 1.5], 1e-6)
    np.testing.assert_allclose(update.weights, [2.0, 1.5], 1e-6)
    # Not conflicting: the plain sum.
    update, _ = method.update(linear_objective([[1.0, 0.0], [1.0, 1.0]]), (), RNG)
    np.testing.assert_allclose(update.shared_grads, [2.0, 1.0], 1e-6)
    np.testing.assert_allclose(update.weights, [1.0, 1.0], 1e-6)
    # After projection the conflict is gone: <g1^PC, g2> = 0.
    c = pcgrad_coefficients(jnp.asarray([[1.0, -1.0], [-1.0, 2.0]]), jnp.asarray([[0, 1], [1, 0]]))
    g = np.array([[1.0, 0.0], [-1.0, 1.0]])
    assert abs((np.asarray(c[0]) @ g) @ g[1]) < 1e-6


def test_pcgrad_order_matters_and_matches_the_official_loop():
    g = np.random.default_rng(3).normal(size=(4, 5))
    g[1] = -0.8 * g[0] + 0.1 * g[1]  # make sure there are conflicts
    update, _ = pcgrad().update(linear_objective(g), (), RNG)
    orders = jax.vmap(lambda r: jax.random.permutation(r, 4))(jax.random.split(RNG, 4))
    np.testing.assert_allclose(update.shared_grads, np_pcgrad(g, np.asarray(orders)), 1e-5, 1e-5)
    fixed, _ = pcgrad(shuffle=False).update(linear_objective(g), (), RNG)
    np.testing.assert_allclose(fixed.shared_grads, np_pcgrad(g, [range(4)] * 4), 1e-5, 1e-5)


@pytest.mark.parametrize("wrt", ["shared", "representation"])
def test_pcgrad_on_the_toy_model(wrt):
    params, data = make_problem()
    update, _ = pcgrad(wrt=wrt, shuffle=False).update(make_objective(params, data), (), RNG)
    rows = per_task_reference(params, data, wrt)
    k = rows @ rows.T
    weights = np.asarray(pcgrad_coefficients(jnp.asarray(k), jnp.tile(jnp.arange(3), (3, 1))))
    np.testing.assert_allclose(np.asarray(update.weights), weights.sum(0), 1e-4, 1e-6)
    check_update(update, params, data, weights.sum(0))
    np.testing.assert_allclose(update.losses, total_losses(params, data), 1e-6)


# --- MGDA --------------------------------------------------------------------------------------


def brute_force_min_norm(k: np.ndarray) -> tuple[np.ndarray, float]:
    """min over the simplex of w^T K w by enumerating supports and solving each KKT system."""
    num = len(k)
    best, best_w = np.inf, None
    for size in range(1, num + 1):
        for support in itertools.combinations(range(num), size):
            s = list(support)
            kkt = np.zeros((size + 1, size + 1))
            kkt[:size, :size] = k[np.ix_(s, s)]
            kkt[:size, size] = kkt[size, :size] = 1.0
            rhs = np.zeros(size + 1)
            rhs[size] = 1.0
            sol = np.linalg.lstsq(kkt, rhs, rcond=None)[0]
            w = np.zeros(num)
            w[s] = sol[:size]
            if w.min() >= -1e-12 and abs(w.sum() - 1) < 1e-9 and w @ k @ w < best - 1e-15:
                best, best_w = w @ k @ w, w
    return best_w, best


def test_min_norm_weights_match_brute_force():
    rng = np.random.default_rng(0)
    for trial in range(6):
        g = rng.normal(size=(4, 7))
        if trial % 2:
            g[2] = -g[0] + 0.05 * g[2]  # an interior solution near zero norm
        k = g @ g.T
        w_ref, v_ref = brute_force_min_norm(k)
        w = np.asarray(simplex.min_norm_weights(jnp.asarray(k, jnp.float32), iters=500))
        assert w.min() >= 0 and w.sum() == pytest.approx(1.0, abs=1e-5)
        assert w @ k @ w == pytest.approx(v_ref, rel=1e-3, abs=1e-5)
        np.testing.assert_allclose(w, w_ref, atol=2e-3)


@pytest.mark.parametrize("normalization", ["none", "l2", "loss", "loss+"])
def test_mgda_ub_weights_and_single_trunk_backward(normalization):
    params, data = make_problem()
    update, _ = mgda(normalization=normalization, iters=500).update(
        make_objective(params, data), (), RNG
    )
    rows = per_task_reference(params, data, "representation")
    losses = np.asarray(total_losses(params, data), np.float64)
    norms = np.linalg.norm(rows, axis=1)
    n = {"none": 1.0, "l2": norms, "loss": losses, "loss+": losses * norms}[normalization]
    rows = rows / np.broadcast_to(n, (3,))[:, None]
    w_ref, _ = brute_force_min_norm(rows @ rows.T)
    np.testing.assert_allclose(update.weights, w_ref, atol=2e-3)
    check_update(update, params, data, np.asarray(update.weights))


def test_mgda_on_shared_parameters():
    params, data = make_problem()
    update, _ = mgda(wrt="shared", iters=500).update(make_objective(params, data), (), RNG)
    rows = per_task_reference(params, data, "shared")
    w_ref, _ = brute_force_min_norm(rows @ rows.T)
    np.testing.assert_allclose(update.weights, w_ref, atol=2e-3)
    check_update(update, params, data, np.asarray(update.weights))


# --- CAGrad ------------------------------------------------------------------------------------


def libmtl_cagrad(g: np.ndarray, calpha: float, rescale: int) -> np.ndarray:
    """LibMTL's CAGrad.backward in numpy with its scipy SLSQP solve (the reference)."""
    gg = g @ g.T
    num = len(g)
    g0_norm = np.sqrt(gg.mean() + 1e-8)
    x_start = np.ones(num) / num
    c = calpha * g0_norm + 1e-8

    def objfn(x):
        return x @ gg @ x_start + c * np.sqrt(x @ gg @ x + 1e-8)

    res = scipy.optimize.minimize(
        objfn,
        x_start,
        bounds=[(0, 1)] * num,
        constraints={"type": "eq", "fun": lambda x: 1 - sum(x)},
        options={"ftol": 1e-12, "maxiter": 1000},
    )
    gw = res.x @ g
    d = g.mean(0) + c / (np.linalg.norm(gw) + 1e-8) * gw
    return d / {0: 1.0, 1: 1 + calpha**2, 2: 1 + calpha}[rescale]


@pytest.mark.parametrize("calpha,rescale", [(0.5, 1), (0.9, 0), (0.2, 2)])
def test_cagrad_matches_libmtl_with_scipy(calpha, rescale):
    rng = np.random.default_rng(1)
    for _ in range(4):
        g = rng.normal(size=(4, 6)) * rng.uniform(0.1, 3.0, size=(4, 1))
        update, _ = cagrad(alpha=calpha, rescale=rescale, iters=400).update(
            linear_objective(g), (), RNG
        )
        ref = libmtl_cagrad(g, calpha, rescale)
        np.testing.assert_allclose(
            update.shared_grads, ref, rtol=2e-3, atol=2e-3 * np.abs(ref).max()
        )


def test_cagrad_on_the_toy_model_matches_reference():
    params, data = make_problem()
    update, _ = cagrad().update(make_objective(params, data), (), RNG)
    rows = per_task_reference(params, data, "shared")
    ref = libmtl_cagrad(rows, 0.5, 1)
    flat = np.concatenate([np.ravel(x) for x in jax.tree.leaves(update.shared_grads)])
    np.testing.assert_allclose(flat, ref, rtol=2e-3, atol=2e-3 * np.abs(ref).max())
    check_update(update, params, data, np.asarray(update.weights))


# --- Nash-MTL ----------------------------------------------------------------------------------


def test_nash_weights_satisfy_the_bargaining_condition():
    rng = np.random.default_rng(2)
    for _ in range(5):
        g = rng.normal(size=(4, 9)) * rng.uniform(0.05, 5.0, size=(4, 1))
        k = g @ g.T
        k = k / np.linalg.norm(k)
        alpha = np.asarray(nash_weights(jnp.asarray(k, jnp.float32), ridge=0.0), np.float64)
        assert np.all(alpha > 0)
        np.testing.assert_allclose(k @ alpha, 1.0 / alpha, rtol=1e-4)
        # The same point from scipy minimising the convex potential.
        ref = scipy.optimize.minimize(
            lambda a, k=k: 0.5 * a @ k @ a - np.sum(np.log(a)),
            np.ones(4),
            jac=lambda a, k=k: k @ a - 1 / a,
            bounds=[(1e-9, None)] * 4,
            method="L-BFGS-B",
            options={"ftol": 1e-15, "gtol": 1e-12},
        ).x
        np.testing.assert_allclose(alpha, ref, rtol=1e-3)


@pytest.mark.parametrize("wrt", ["shared", "representation"])
def test_nash_mtl_on_the_toy_model(wrt):
    params, data = make_problem()
    update, _ = nash_mtl(wrt=wrt).update(make_objective(params, data), (), RNG)
    rows = per_task_reference(params, data, wrt)
    k = rows @ rows.T
    k = k / np.linalg.norm(k)  # the official code normalises G G^T by its Frobenius norm
    alpha = np.asarray(update.weights, np.float64)
    np.testing.assert_allclose(k @ alpha, 1.0 / alpha, rtol=1e-3)
    check_update(update, params, data, alpha)


# --- Aligned-MTL -------------------------------------------------------------------------------


def test_aligned_gradients_are_orthogonal_with_equal_norms():
    rng = np.random.default_rng(4)
    g = rng.normal(size=(3, 8)) * np.array([[0.1], [1.0], [4.0]])
    k = g @ g.T
    lam, v = np.linalg.eigh(k)
    b = np.sqrt(lam.min()) * v @ np.diag(lam**-0.5) @ v.T
    aligned = b @ g
    np.testing.assert_allclose(aligned @ aligned.T, lam.min() * np.eye(3), atol=1e-8)
    w = np.asarray(aligned_weights(jnp.asarray(k, jnp.float32)))
    np.testing.assert_allclose(w @ g, aligned.sum(0), rtol=1e-3, atol=1e-4)
    # A rank-deficient system: the null direction is dropped, as LibMTL does.
    g2 = np.stack([g[0], g[1], g[0] + g[1]])
    w2 = np.asarray(aligned_weights(jnp.asarray(g2 @ g2.T, jnp.float32)))
    assert np.all(np.isfinite(w2))
    lam2, v2 = np.linalg.eigh(g2 @ g2.T)
    lam2, v2 = lam2[1:], v2[:, 1:]
    b2 = np.sqrt(lam2.min()) * v2 @ np.diag(lam2**-0.5) @ v2.T
    np.testing.assert_allclose(w2, b2.sum(0), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("wrt", ["shared", "representation"])
def test_aligned_mtl_on_the_toy_model(wrt):
    params, data = make_problem()
    update, _ = aligned_mtl(wrt=wrt).update(make_objective(params, data), (), RNG)
    rows = per_task_reference(params, data, wrt)
    lam, v = np.linalg.eigh(rows @ rows.T)
    weights = (np.sqrt(lam.min()) * v @ np.diag(lam**-0.5) @ v.T).sum(0)
    np.testing.assert_allclose(update.weights, weights, rtol=1e-3)
    check_update(update, params, data, weights, rtol=1e-3)


# --- all methods: sharding, optimisation, config -----------------------------------------------

METHODS = {
    f"{name}-{wrt}": (name, wrt)
    for name in ("pcgrad", "mgda", "cagrad", "nash_mtl", "aligned_mtl")
    for wrt in ("shared", "representation")
} | {f"{name}-shared": (name, "shared") for name in ("upgrad", "imtl_g", "fairgrad")}
# The Gram route reduces over parameters and the batch the same way (tests/test_gramian.py
# checks every method against the exact route on one device).
METHODS |= {f"{name}-shared_gramian": (name, "shared_gramian") for name in ("pcgrad", "upgrad")}


@pytest.mark.parametrize("key", METHODS)
def test_eight_devices_match_one_device(key):
    """The batch split over 8 fake devices: Gram matrices reduce over the whole batch."""
    name, wrt = METHODS[key]
    method = get_weighting(name, {"wrt": wrt})
    params, data = make_problem()
    opt = optax.sgd(0.1)
    train_step = jax.jit(make_train_step(method, opt))
    args = (params, opt.init(params), method.init(3), data, RNG)
    single = train_step(*jax.device_put(args, jax.devices()[0]))

    mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
    replicated = NamedSharding(mesh, PartitionSpec())
    args = jax.device_put(args, replicated)
    args = (*args[:3], jax.device_put(data, NamedSharding(mesh, PartitionSpec("data"))), args[4])
    assert len(args[3]["x"].addressable_shards) == 8
    sharded = train_step(*args)
    assert_tree_close(sharded, single, 1e-4, 1e-4)


# One route per method keeps this fast; both routes are checked against references above.
SHORT = ("pcgrad-shared", "mgda-representation", "cagrad-shared", "nash_mtl-representation",
         "aligned_mtl-shared", "upgrad-shared", "imtl_g-shared", "fairgrad-shared")  # fmt: skip


@pytest.mark.parametrize("key", SHORT)
def test_short_optimisation_lowers_the_total_loss(key):
    name, wrt = METHODS[key]
    method = get_weighting(name, {"wrt": wrt})
    params, data = make_problem()
    opt = optax.adam(0.02)
    train_step = jax.jit(make_train_step(method, opt))
    opt_state, state = opt.init(params), method.init(3)
    start = float(jnp.sum(total_losses(params, data)))
    for rng in jax.random.split(RNG, 60):
        params, opt_state, state, update = train_step(params, opt_state, state, data, rng)
        assert np.all(np.isfinite(update.weights))
    assert float(jnp.sum(total_losses(params, data))) < 0.8 * start


def _dot_count(num_tasks: int, method) -> int:
    """`dot_general`s in the program of one update with `num_tasks` tasks on a fixed trunk."""
    x = jnp.ones((16, 5))

    def objective(p):
        return base.TaskObjective(
            p["w"],
            p["h"],
            lambda w: (jnp.tanh(x @ w), {}),
            lambda h, z: (jnp.mean(jnp.square(z @ h), axis=0), {}),
        )

    params = {"w": jnp.ones((5, 4)), "h": jnp.ones((4, num_tasks))}
    jaxpr = jax.make_jaxpr(lambda p: method.update(objective(p), method.init(num_tasks), RNG))
    return str(jaxpr(params)).count("dot_general")


@pytest.mark.parametrize(
    "name", ["pcgrad", "mgda", "cagrad", "nash_mtl", "aligned_mtl", "upgrad", "imtl_g", "fairgrad"]
)
@pytest.mark.parametrize("wrt", ["shared", "shared_gramian"])
def test_per_task_gradients_are_one_vectorised_pass(name, wrt):
    """The program does not grow with the number of tasks: no Python loop of backward passes."""
    method = get_weighting(name, {"wrt": wrt})
    assert _dot_count(2, method) == _dot_count(7, method)


def test_gram_and_combine():
    tree = {"a": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones((2, 2, 2))}
    flat = np.asarray(base.flatten_task_grads(tree))
    np.testing.assert_allclose(gradients.gram(tree), flat @ flat.T, 1e-6)
    out = gradients.combine(jnp.asarray([2.0, -1.0]), tree)
    np.testing.assert_allclose(
        base.flatten_task_grads(jax.tree.map(lambda x: x[None], out))[0],
        np.array([2.0, -1.0]) @ flat,
        1e-6,
    )


def test_bad_options_raise_config_errors():
    with pytest.raises(ConfigError, match="wrt must be one of"):
        get_weighting("pcgrad", {"wrt": "shard"})
    with pytest.raises(ConfigError, match="normalization must be one of"):
        get_weighting("mgda", {"normalization": "L2"})
    with pytest.raises(ConfigError, match="rescale must be one of"):
        get_weighting("cagrad", {"rescale": 3})
    with pytest.raises(ConfigError, match="Did you mean 'pcgrad'"):
        get_weighting("pcgard")
