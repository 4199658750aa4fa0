"""Loss-weighting methods against hand-written references on a toy three-task regression."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mtl.errors import ConfigError
from mtl.weighting import (
    WEIGHTINGS,
    base,
    db_mtl,
    default_config,
    dwa,
    equal,
    famo,
    get_weighting,
    gradnorm,
    rlw,
    stch,
    uncertainty,
)

TASKS = ("a", "b", "c")
N, D, H = 64, 6, 8  # examples (divisible by the 8 test devices), inputs, representation width


def make_problem(seed: int = 0) -> tuple[dict, dict]:
    """Params of a tanh trunk with three linear heads, and fixed data with three targets.

    Tasks a and b are functions of the input the trunk can represent, at different scales; c is
    standardised noise, so its loss falls slowest.
    """
    ks = jax.random.split(jax.random.key(seed), 8)
    x = jax.random.normal(ks[0], (N, D))
    a, b = jax.random.normal(ks[1], (D,)), jax.random.normal(ks[2], (D,))
    noise = jax.random.normal(ks[3], (N,))
    noise = (noise - noise.mean()) / noise.std()
    y = jnp.stack([jnp.tanh(x @ a), 3.0 * jnp.tanh(x @ b), noise], axis=1)
    params = {
        "shared": {"w": jax.random.normal(ks[4], (D, H)) / np.sqrt(D), "b": jnp.zeros(H)},
        "heads": {
            t: {"w": jax.random.normal(k, (H,)) / np.sqrt(H), "b": jnp.zeros(())}
            for t, k in zip(TASKS, jax.random.split(ks[5], 3), strict=True)
        },
    }
    return params, {"x": x, "y": y}


def representation(shared, data):
    z = jnp.tanh(data["x"] @ shared["w"] + shared["b"])
    return z, {"z_mean": jnp.mean(z)}


def task_losses(heads, z, data):
    preds = jnp.stack([z @ heads[t]["w"] + heads[t]["b"] for t in TASKS], axis=1)
    return jnp.mean(jnp.square(preds - data["y"]), axis=0), preds


def make_objective(params, data, scale=None) -> base.TaskObjective:
    """The toy as a `TaskObjective`; `scale` multiplies the losses (to script their values)."""

    def losses_fn(heads, z):
        losses, preds = task_losses(heads, z, data)
        return (losses if scale is None else losses * scale), preds

    return base.TaskObjective(
        params["shared"], params["heads"], lambda s: representation(s, data), losses_fn
    )


def total_losses(params, data):
    """Per-task losses as a plain function of all parameters, for references."""
    z, _ = representation(params["shared"], data)
    return task_losses(params["heads"], z, data)[0]


def loop_grads(params, data, weights):
    """Reference gradient of `sum_t weights[t] * loss_t`, one `jax.grad` per task."""
    out = None
    for t in range(len(TASKS)):
        g = jax.grad(lambda p, t=t: total_losses(p, data)[t])(params)
        g = jax.tree.map(lambda x, w=float(weights[t]): w * x, g)
        out = g if out is None else jax.tree.map(jnp.add, out, g)
    return out


def assert_tree_close(actual, expected, rtol=1e-5, atol=1e-6):
    jax.tree.map(
        lambda a, e: np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol, atol),
        actual,
        expected,
    )


def assert_grads(update: base.Update, expected):
    assert_tree_close(update.shared_grads, expected["shared"])
    assert_tree_close(update.task_grads, expected["heads"])


def np_adam(params, grads_seq, lr, weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8):
    """torch.optim.Adam written out: L2 decay added to the gradient, bias-corrected moments."""
    p = np.asarray(params, np.float64)
    m, v = np.zeros_like(p), np.zeros_like(p)
    for k, g in enumerate(grads_seq, start=1):
        g = np.asarray(g(p) if callable(g) else g, np.float64) + weight_decay * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr * (m / (1 - b1**k)) / (np.sqrt(v / (1 - b2**k)) + eps)
    return p


def np_softmax(x):
    e = np.exp(x - np.max(x))
    return e / e.sum()


RNG = jax.random.key(42)


# --- the helpers in base ---------------------------------------------------------------------


def test_per_task_shared_grads_match_loop():
    params, data = make_problem()
    shared_grads, task_grads, update = base.per_task_shared_grads(make_objective(params, data))
    for t in range(len(TASKS)):
        ref = jax.grad(lambda s, t=t: total_losses({**params, "shared": s}, data)[t])(
            params["shared"]
        )
        assert_tree_close(jax.tree.map(lambda g, t=t: g[t], shared_grads), ref, 1e-6, 1e-6)
    summed = loop_grads(params, data, np.ones(3))
    assert_tree_close(task_grads, summed["heads"], 1e-6, 1e-6)
    assert_tree_close(update.shared_grads, summed["shared"], 1e-6, 1e-6)
    np.testing.assert_allclose(update.losses, total_losses(params, data), 1e-6)
    flat = base.flatten_task_grads(shared_grads)
    assert flat.shape == (3, D * H + H)
    assert_tree_close(
        base.unflatten_like(flat[1], shared_grads), jax.tree.map(lambda g: g[1], shared_grads)
    )


def test_representation_grads_match_loop():
    params, data = make_problem()
    z_grads, (losses, rep_aux, _, z) = base.representation_grads(make_objective(params, data))
    z_ref, aux_ref = representation(params["shared"], data)
    np.testing.assert_allclose(z, z_ref, 1e-6)
    np.testing.assert_allclose(rep_aux["z_mean"], aux_ref["z_mean"], 1e-6)
    assert z_grads.shape == (3, N, H)
    for t in range(len(TASKS)):
        ref = jax.grad(lambda z_, t=t: task_losses(params["heads"], z_, data)[0][t])(z_ref)
        np.testing.assert_allclose(z_grads[t], ref, 1e-6, 1e-6)
    np.testing.assert_allclose(losses, total_losses(params, data), 1e-6)


# --- each method against a hand-written reference --------------------------------------------


def test_equal_is_grad_of_sum():
    params, data = make_problem()
    method = equal()
    update, _ = method.update(make_objective(params, data), method.init(3), RNG)
    assert_grads(update, loop_grads(params, data, np.ones(3)))
    np.testing.assert_array_equal(update.weights, np.ones(3))
    assert float(update.representation_aux["z_mean"]) == pytest.approx(
        float(representation(params["shared"], data)[1]["z_mean"]), abs=1e-7
    )
    assert update.task_aux.shape == (N, 3)


def test_uncertainty_weights_and_log_variance_steps():
    params, data = make_problem()
    lr = 0.1
    method = uncertainty(lr=lr)
    state = method.init(3)
    losses = np.asarray(total_losses(params, data), np.float64)

    def s_grad(s):  # d/ds of sum(L / (2 exp(s)) + s / 2)
        return -losses / (2 * np.exp(s)) + 0.5

    s = np.zeros(3)
    for step in range(2):
        update, state = method.update(make_objective(params, data), state, RNG)
        weights = 1 / (2 * np.exp(s))
        np.testing.assert_allclose(update.weights, weights, 1e-6)
        assert_grads(update, loop_grads(params, data, weights))
        s = np_adam(np.zeros(3), [s_grad] * (step + 1), lr)
        np.testing.assert_allclose(state.log_vars, s, 1e-5, 1e-6)


def test_dwa_ones_then_softmax_of_window_ratios():
    params, data = make_problem()
    window, temperature = 2, 1.5
    method = dwa(temperature=temperature, window=window)
    state = method.init(3)
    rng = np.random.default_rng(0)
    scales = rng.uniform(0.5, 2.0, size=(4 * window, 3)).astype(np.float32)
    seen = []
    for step, scale in enumerate(scales):
        update, state = method.update(make_objective(params, data, jnp.asarray(scale)), state, RNG)
        if step < 2 * window:
            expected = np.ones(3)
        else:
            complete = len(seen) // window * window
            means = np.asarray(seen[:complete], np.float64).reshape(-1, window, 3).mean(1)
            expected = 3 * np_softmax(means[-1] / means[-2] / temperature)
        np.testing.assert_allclose(update.weights, expected, 1e-6)
        assert_grads(update, loop_grads(params, data, expected * scale))
        seen.append(np.asarray(update.losses))
    assert not np.allclose(update.weights, 1.0)


def test_rlw_weights_are_a_random_softmax():
    params, data = make_problem()
    method = rlw()
    objective = make_objective(params, data)
    state = method.init(3)
    u1, _ = method.update(objective, state, jax.random.key(1))
    u1b, _ = method.update(objective, state, jax.random.key(1))
    u2, _ = method.update(objective, state, jax.random.key(2))
    w = np.asarray(u1.weights)
    assert np.all(w > 0) and w.sum() == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_array_equal(u1.weights, u1b.weights)
    assert not np.allclose(u1.weights, u2.weights)
    expected = np_softmax(np.asarray(jax.random.normal(jax.random.key(1), (3,))))
    np.testing.assert_allclose(w, expected, 1e-6)
    assert_grads(u1, loop_grads(params, data, expected))


def grad_norm_reference(params, data, wrt, scale):
    """Per-task gradient norms of `scale * losses`, one `jax.grad` per task."""
    norms = []
    for t in range(len(TASKS)):
        if wrt == "shared":
            g = jax.grad(lambda s, t=t: total_losses({**params, "shared": s}, data)[t])(
                params["shared"]
            )
            g = np.concatenate([np.ravel(x) for x in jax.tree.leaves(g)])
        else:
            z, _ = representation(params["shared"], data)
            g = jax.grad(lambda z_, t=t: task_losses(params["heads"], z_, data)[0][t])(z)
            g = np.asarray(g).sum(0)  # LibMTL sums the representation gradient over the batch
        norms.append(scale[t] * np.linalg.norm(np.asarray(g, np.float64)))
    return np.array(norms)


@pytest.mark.parametrize("wrt", ["shared", "representation"])
def test_gradnorm_logit_steps_match_hand_gradient(wrt):
    params, data = make_problem()
    alpha, lr = 1.5, 0.05
    method = gradnorm(alpha=alpha, lr=lr, wrt=wrt)
    state = method.init(3)
    # The losses are scripted by scaling: the first step fixes L(0), later ones change the
    # loss ratios and the gradient norms, so Adam's steps depend on the gradients' magnitudes.
    scales = np.array([[1.0, 1.0, 1.0], [0.6, 0.3, 0.9], [0.5, 0.2, 0.9], [0.45, 0.1, 0.85]])
    losses0 = np.asarray(total_losses(params, data), np.float64)
    grads_seq, logits = [], np.ones(3)
    for scale in scales:
        update, state = method.update(make_objective(params, data, jnp.asarray(scale)), state, RNG)

        # L_grad = sum_t |w_t n_t - mean(w n) r_t^alpha|, w = 3 softmax(logits), target constant:
        # dL_grad/dlogit_j = sum_t sign_t n_t dw_t/dlogit_j, dw_t/dlogit_j = w_t (delta_tj - p_j).
        p = np_softmax(logits)
        w = 3 * p
        n = grad_norm_reference(params, data, wrt, scale)
        r = scale / np.mean(scale)  # (L / L(0)) / mean(L / L(0))
        sign = np.sign(w * n - np.mean(w * n) * r**alpha)
        jac = w[:, None] * (np.eye(3) - p[None, :])
        grads_seq.append((sign * n) @ jac)

        np.testing.assert_allclose(update.weights, w, 1e-5)
        assert_grads(update, loop_grads(params, data, w * scale))
        logits = np_adam(np.ones(3), grads_seq, lr)
        np.testing.assert_allclose(state.logits, logits, 1e-5, 1e-6)
        np.testing.assert_allclose(state.initial_losses, losses0, 1e-6)
    assert int(state.step) == len(scales)


def test_gradnorm_keeps_first_losses_and_lifts_the_slowest_task():
    params, data = make_problem()
    method = gradnorm(alpha=1.5, lr=0.025)
    state = method.init(3)
    opt = optax.sgd(0.1)
    opt_state = opt.init(params)
    first_losses = np.asarray(total_losses(params, data))

    @jax.jit
    def step(params, opt_state, state):
        update, state = method.update(make_objective(params, data), state, RNG)
        grads = {"shared": update.shared_grads, "heads": update.task_grads}
        steps, opt_state = opt.update(grads, opt_state)
        return optax.apply_updates(params, steps), opt_state, state, update

    for _ in range(40):
        params, opt_state, state, update = step(params, opt_state, state)
    np.testing.assert_allclose(state.initial_losses, first_losses, 1e-6)
    ratios = np.asarray(update.losses) / first_losses
    slowest = int(np.argmax(ratios))
    assert slowest == 2  # the noise task
    assert np.argmax(update.weights) == slowest and update.weights[slowest] > 1.0


def famo_reference(losses_seq, lr, gamma, min_loss):
    """The official FAMO code (Cranial-XIX/FAMO, famo.py) in numpy: weights and logits."""
    w = np.zeros(3)
    m, v = np.zeros(3), np.zeros(3)
    weights_seq = []
    for k, (before, after) in enumerate(losses_seq, start=1):
        z = np_softmax(w)
        d = before - min_loss + 1e-8
        c = np.sum(z / d)
        weights_seq.append(z / (c * d))  # gradient of sum(log(d) z / c) w.r.t. the losses
        delta = np.log(before - min_loss + 1e-8) - np.log(after - min_loss + 1e-8)
        g = z * (delta - np.dot(z, delta)) + gamma * w  # softmax vjp, then Adam's L2 decay
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        w = w - lr * (m / (1 - 0.9**k)) / (np.sqrt(v / (1 - 0.999**k)) + 1e-8)
    return weights_seq, w


def test_famo_update_and_after_update_match_official_code():
    params, data = make_problem()
    lr, gamma, min_loss = 0.1, 0.05, 0.01
    method = famo(lr=lr, gamma=gamma, min_loss=min_loss)
    state = method.init(3)
    seen = []
    for _ in range(3):
        objective = make_objective(params, data)
        update, state = method.update(objective, state, RNG)

        # The model gradient is that of the official loss, written out with c held constant.
        def famo_loss(p, w=state.logits):
            losses = total_losses(p, data)
            d = losses - min_loss + 1e-8
            z = jax.nn.softmax(w)
            c = jax.lax.stop_gradient(jnp.sum(z / d))
            return jnp.sum(jnp.log(d) * z / c)

        assert_grads(update, jax.grad(famo_loss)(params))
        grads = {"shared": update.shared_grads, "heads": update.task_grads}
        params = jax.tree.map(lambda p, g: p - 0.3 * g, params, grads)
        after = total_losses(params, data)
        state = method.after_update(state, after)
        seen.append((np.asarray(update.losses, np.float64), np.asarray(after, np.float64)))
        weights_ref, logits_ref = famo_reference(seen, lr, gamma, min_loss)
        np.testing.assert_allclose(update.weights, weights_ref[-1], 1e-5)
        np.testing.assert_allclose(state.logits, logits_ref, 1e-5, 1e-6)
    assert np.asarray(update.weights).sum() == pytest.approx(1.0, abs=1e-6)


# --- every method: jit with shardings, and a short optimisation ------------------------------

METHODS = {
    "equal": lambda: equal(),
    "uncertainty": lambda: uncertainty(lr=0.05),
    "dwa": lambda: dwa(window=5),
    "rlw": lambda: rlw(),
    "gradnorm-shared": lambda: gradnorm(),
    "gradnorm-representation": lambda: gradnorm(wrt="representation"),
    "famo": lambda: famo(),
    "stch": lambda: stch(warmup=5, window=5),
    "db_mtl": lambda: db_mtl(),
}


def make_train_step(method: base.Weighting, opt: optax.GradientTransformation):
    """A jit-able train step: weighting update, optimizer step, then `after_update` if any."""

    def train_step(params, opt_state, state, data, rng):
        update, state = method.update(make_objective(params, data), state, rng)
        grads = {"shared": update.shared_grads, "heads": update.task_grads}
        steps, opt_state = opt.update(grads, opt_state, params)
        params = optax.apply_updates(params, steps)
        if method.after_update is not None:
            state = method.after_update(state, total_losses(params, data))
        return params, opt_state, state, update

    return train_step


@pytest.mark.parametrize("name", METHODS)
def test_jit_with_named_shardings_matches_eager(name):
    method = METHODS[name]()
    params, data = make_problem()
    opt = optax.sgd(0.1)
    train_step = make_train_step(method, opt)
    args = (params, opt.init(params), base.initial_state(method, 3, params["shared"]), data, RNG)
    eager = train_step(*args)

    mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
    replicated = NamedSharding(mesh, PartitionSpec())
    batch = NamedSharding(mesh, PartitionSpec("data"))
    args = jax.device_put(args, replicated)
    args = (*args[:3], jax.device_put(data, batch), args[4])
    jitted = jax.jit(train_step)(*args)
    assert_tree_close(jitted, eager, 1e-5, 1e-6)


@pytest.mark.parametrize("name", METHODS)
def test_short_optimisation_lowers_the_total_loss(name):
    method = METHODS[name]()
    params, data = make_problem()
    opt = optax.adam(0.02)
    train_step = jax.jit(make_train_step(method, opt))
    opt_state, state = opt.init(params), base.initial_state(method, 3, params["shared"])
    start = float(jnp.sum(total_losses(params, data)))
    for rng in jax.random.split(RNG, 60):
        params, opt_state, state, update = train_step(params, opt_state, state, data, rng)
        assert np.all(np.isfinite(update.weights))
    end = float(jnp.sum(total_losses(params, data)))
    assert end < 0.8 * start, (start, end)


# --- registry and config ---------------------------------------------------------------------


def test_get_weighting_rejects_unknown_names_and_options():
    with pytest.raises(ConfigError, match="Did you mean 'dwa'"):
        get_weighting("dwaa")
    with pytest.raises(ConfigError, match=r"'temprature'.*temperature=2.0, window=100"):
        get_weighting("dwa", {"temprature": 3.0})
    with pytest.raises(ConfigError, match="weighting.dwa.window must be a int"):
        get_weighting("dwa", {"window": 2.5})
    with pytest.raises(ConfigError, match="weighting.gradnorm.wrt must be a str"):
        get_weighting("gradnorm", {"wrt": 1})
    with pytest.raises(ConfigError, match="wrt must be one of"):
        get_weighting("gradnorm", {"wrt": "shraed"})
    with pytest.raises(ConfigError, match="no option"):
        get_weighting("equal", {"lr": 0.1})


def test_default_config_round_trip():
    config = default_config()
    assert config.name == "equal"
    assert set(config.keys()) == {"name", *WEIGHTINGS}
    assert config.gradnorm.to_dict() == {"alpha": 1.5, "lr": 0.025, "wrt": "shared"}
    for name in WEIGHTINGS:
        method = get_weighting(name, config.get(name))
        assert isinstance(method, base.Weighting)
        base.initial_state(method, 3, make_problem()[0]["shared"])
    # As `--config.weighting.name=dwa --config.weighting.dwa.temperature=3` would do.
    config.update_from_flattened_dict({"name": "dwa", "dwa.temperature": 3, "dwa.window": 2})
    method = get_weighting(config.name, config.get(config.name))
    params, data = make_problem()
    state = method.init(3)
    scales = [1.0, 1.0, 2.0, 2.0, 1.0]  # window means 1, 2: ratios 2 everywhere -> ones
    for s in scales:
        update, state = method.update(make_objective(params, data, s), state, RNG)
    np.testing.assert_allclose(update.weights, np.ones(3), 1e-6)
    np.testing.assert_allclose(state.last_mean / state.before_last_mean, 2.0, 1e-6)
