"""The MAML family against hand-written references: meta-gradients, first order, ANIL,
learned rates, per-step batch norm, Reptile and ProtoNets."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl.meta import maml
from mtl.meta import model as mm
from mtl.meta.inner_loop import inner_loop
from mtl.meta.protonets import ProtoNet
from mtl.meta.reptile import Reptile
from mtl.models import default_config

tree_map = jax.tree_util.tree_map


def _conv_model(ways=3):
    config = default_config()
    config.conv4.update(filters=4, conv="matmul")
    config.head_hidden = ()
    return mm.build(config, "classification", ways, (8, 8, 1), seed=0)


def _mlp_model(batch_norm=False, kind="regression", outputs=1, shape=(1,)):
    config = default_config()
    config.trunk = "mlp"
    config.mlp.hidden = (16, 16)
    config.mlp.batch_norm = batch_norm
    return mm.build(config, kind, outputs, shape, seed=0)


def _class_batch(tasks=2, ways=3, shots=2, queries=2, seed=0):
    rng = np.random.default_rng(seed)
    part = lambda k: {
        "x": jnp.asarray(rng.normal(size=(tasks, ways * k, 8, 8, 1)).astype(np.float32)),
        "y": jnp.asarray(np.tile(np.repeat(np.arange(ways), k), (tasks, 1)).astype(np.int32)),
    }
    return {"support": part(shots), "query": part(queries)}


def _reg_batch(tasks=3, k=5, seed=0):
    rng = np.random.default_rng(seed)
    part = lambda: {
        "x": jnp.asarray(rng.uniform(-5, 5, (tasks, k, 1)).astype(np.float32)),
        "y": jnp.asarray(rng.normal(size=(tasks, k, 1)).astype(np.float32)),
    }
    return {"support": part(), "query": part()}


def _loss(model, params, state, x, y):
    z, _ = model.trunk.apply(params["trunk"], state["trunk"], x, train=True)
    return model.loss(model.outputs(params["head"], z), y)


def _reference_loss(model, params, state, batch, *, lr, steps, first_order=False):
    """Mean query loss after `steps` hand-written SGD steps on the support loss.

    `lr` is a number or a function `(step) -> rate tree like params` (learned rates).
    """
    rate = lr if callable(lr) else (lambda i: tree_map(lambda _: lr, params))

    def task(ep):
        fast = params
        for i in range(steps):
            g = jax.grad(_loss, argnums=1)(
                model, fast, state, ep["support"]["x"], ep["support"]["y"]
            )
            if first_order:
                g = jax.lax.stop_gradient(g)
            fast = tree_map(lambda p, gi, r: p - r * gi, fast, g, rate(i))
        return _loss(model, fast, state, ep["query"]["x"], ep["query"]["y"])

    tasks = batch["query"]["x"].shape[0]
    return jnp.mean(jnp.stack([task(tree_map(lambda a, t=t: a[t], batch)) for t in range(tasks)]))


def _reference_meta_grad(model, params, state, batch, **kw):
    f = lambda p: _reference_loss(model, p, state, batch, **kw)
    return jax.jit(jax.grad(f))(params)


def _close(a, b, rtol=2e-4, atol=2e-5):
    jax.tree_util.tree_map(
        lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b
    )


@pytest.mark.parametrize(
    "net, steps, first_order", [("conv", 1, False), ("mlp", 3, False), ("mlp", 1, True)]
)
def test_maml_meta_gradient_matches_hand_written_inner_loop(net, steps, first_order):
    """conv4 with batch norm (batch statistics), and an MLP through the scanned steps."""
    model, params, state = _conv_model() if net == "conv" else _mlp_model()
    batch = _class_batch() if net == "conv" else _reg_batch()
    ways = 3 if net == "conv" else 1
    opts = maml.MamlOptions(inner_lr=0.3, inner_steps=steps, first_order=first_order)
    learner = maml.build(model, params, state, opts)
    meta, mstate = learner.init(params, state)
    grads, aux = jax.jit(lambda m, b: learner.meta_grads(m, mstate, b, ways=ways, step=0))(
        meta, batch
    )
    ref = _reference_meta_grad(
        model, params, state, batch, lr=0.3, steps=steps, first_order=first_order
    )
    _close(grads["params"], ref)
    if first_order:
        # First order really differs from second order (the test would catch a no-op).
        second = _reference_meta_grad(model, params, state, batch, lr=0.3, steps=1)
        diff = max(
            float(jnp.max(jnp.abs(a - b)))
            for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(second), strict=True)
        )
        assert diff > 1e-4


def test_remat_gives_the_same_meta_gradient():
    model, params, state = _mlp_model()
    batch = _reg_batch()
    out = []
    for remat in (False, True):
        learner = maml.build(
            model, params, state, maml.MamlOptions(inner_lr=0.01, inner_steps=3, remat=remat)
        )
        meta, mstate = learner.init(params, state)
        grads = jax.jit(lambda m, s, b, lr=learner: lr.meta_grads(m, s, b, ways=1, step=0))
        out.append(grads(meta, mstate, batch)[0])
    _close(out[0], out[1], rtol=1e-5, atol=1e-6)
    ref = _reference_meta_grad(model, params, state, batch, lr=0.01, steps=3)
    _close(out[1]["params"], ref)


def test_anil_adapts_only_the_head_and_matches_reference():
    model, params, state = _mlp_model(
        batch_norm=True, kind="classification", outputs=3, shape=(8, 8, 1)
    )
    opts = maml.MamlOptions(inner_lr=0.5, inner_steps=2, adapt="head")
    learner = maml.build(model, params, state, opts)
    meta, mstate = learner.init(params, state)
    batch = _class_batch()
    ep = tree_map(lambda a: a[0], batch)
    adapt = jax.jit(lambda m, s, x: learner.adapt(m, s, x, ways=3, steps=2, train_bn=True)[0])
    fast = adapt(meta, mstate, ep["support"])
    assert set(fast) == {"head"}
    assert not np.allclose(fast["head"]["out"]["kernel"], params["head"]["out"]["kernel"])

    def reference(params):
        def task(ep):
            embed = lambda x: model.trunk.apply(params["trunk"], state["trunk"], x, train=True)[0]
            z_s, z_q = embed(ep["support"]["x"]), embed(ep["query"]["x"])
            head_loss = lambda h, z, y: model.loss(model.outputs(h, z), y)
            h = params["head"]
            for _ in range(2):
                g = jax.grad(head_loss)(h, z_s, ep["support"]["y"])
                h = tree_map(lambda p, gi: p - 0.5 * gi, h, g)
            return head_loss(h, z_q, ep["query"]["y"])

        return jnp.mean(jnp.stack([task(tree_map(lambda a, t=t: a[t], batch)) for t in range(2)]))

    grads, _ = jax.jit(lambda m, s: learner.meta_grads(m, s, batch, ways=3, step=0))(meta, mstate)
    _close(grads["params"], jax.jit(jax.grad(reference))(params))


@pytest.mark.parametrize("mode, shape", [("per_param", (1, 16, 16)), ("per_layer_step", (3,))])
def test_meta_sgd_and_lslr_rates_match_reference(mode, shape):
    model, params, state = _mlp_model()
    batch = _reg_batch()
    opts = maml.MamlOptions(inner_lr=0.01, inner_steps=3, learn_inner_lr=mode)
    learner = maml.build(model, params, state, opts)
    meta, mstate = learner.init(params, state)
    assert meta["inner_lrs"]["trunk"]["layers"][1]["kernel"].shape == shape
    grads, _ = jax.jit(lambda m: learner.meta_grads(m, mstate, batch, ways=1, step=0))(meta)

    def reference(both):
        params, rates = both
        rate = lambda i: tree_map(lambda r: r[min(i, r.shape[0] - 1)], rates)
        return _reference_loss(model, params, state, batch, lr=rate, steps=3)

    ref_params, ref_rates = jax.jit(jax.grad(reference))((params, meta["inner_lrs"]))
    _close(grads["params"], ref_params)
    _close(grads["inner_lrs"], ref_rates)
    for leaf in jax.tree.leaves(grads["inner_lrs"]):
        assert np.abs(leaf).max() > 0


def test_mamlpp_per_step_batch_norm_and_multi_step_loss():
    model, params, state = _mlp_model(batch_norm=True)
    opts = maml.MamlOptions(
        inner_lr=0.01,
        inner_steps=2,
        learn_inner_lr="per_layer_step",
        multi_step_loss=True,
        msl_anneal_steps=10,
        per_step_bn=True,
    )
    learner = maml.build(model, params, state, opts)
    meta, mstate = learner.init(params, state)
    norm = lambda tree: tree["trunk"]["norms"][0]
    assert norm(meta["params"])["scale"].shape == (3, 16)  # steps + 1 entries
    assert norm(mstate)["mean"].shape == (3, 16)
    grads, aux = jax.jit(lambda m: learner.meta_grads(m, mstate, _reg_batch(), ways=1, step=0))(
        meta
    )
    # Every step's BN weights are used and learned; BN weights do not adapt in the inner loop.
    assert np.all(np.abs(norm(grads["params"])["scale"]).max(axis=1) > 0)
    assert norm(grads["inner_lrs"]) == {"scale": None, "bias": None}
    assert np.all(np.abs(grads["inner_lrs"]["trunk"]["layers"][1]["kernel"]) > 0)
    # Per-step running statistics: every entry moved away from its initial value.
    assert np.all(np.abs(norm(aux["state"])["mean"]).max(axis=1) > 0)
    np.testing.assert_allclose(maml.msl_weights(3, 10, 0), [1 / 3] * 3, rtol=1e-6)
    np.testing.assert_allclose(maml.msl_weights(3, 10, 10), [0.01, 0.01, 0.98], rtol=1e-5)


def test_zero_and_proto_heads_adapt_to_any_number_of_ways():
    model, params, state = _mlp_model(kind="classification", outputs=3, shape=(8, 8, 1))
    for head_init in ("zero", "proto"):
        learner = maml.build(
            model, params, state, maml.MamlOptions(inner_lr=0.5, head_init=head_init)
        )
        meta, mstate = learner.init(params, state)
        assert "head" not in meta["params"]
        ep = tree_map(lambda a: a[0], _class_batch(ways=5))
        curve = jax.jit(lambda m, s, e, f=learner.curve: f(m, s, e, ways=5, steps=2))(
            meta, mstate, ep
        )
        assert curve.shape == (3,)


def test_inner_loop_scan_equals_python_loop():
    loss_fn = lambda w, step: (jnp.sum((w["a"] * 3.0 - 1.0) ** 2) * (1.0 + step), ())
    w = {"a": jnp.array([0.3, -0.2])}
    lrs = {"a": jnp.array([0.01, 0.02, 0.03])}
    out, trace = inner_loop(loss_fn, w, lrs, steps=4, observe=lambda f, i: f["a"][0])
    ref = w["a"]
    for i in range(4):
        g = jax.grad(lambda a, i=i: loss_fn({"a": a}, i)[0])(ref)
        ref = ref - lrs["a"][min(i, 2)] * g
    np.testing.assert_allclose(out["a"], ref, rtol=1e-6)
    assert trace["loss"].shape == (4,) and trace["observed"].shape == (4,)
    np.testing.assert_allclose(trace["observed"][-1], ref[0], rtol=1e-6)


def test_reptile_moves_towards_adapted_weights():
    model, params, state = _mlp_model()
    opts = maml.MamlOptions(inner_lr=0.02, inner_steps=3, first_order=True)
    reptile = Reptile(maml.build(model, params, state, opts))
    meta, mstate = reptile.init(params, state)
    batch = _reg_batch(tasks=2)
    grads, _ = reptile.meta_grads(meta, mstate, batch, ways=1, step=0)
    deltas = []
    for t in range(2):
        ep = tree_map(lambda a, t=t: a[t], batch)
        x = jnp.concatenate([ep["support"]["x"], ep["query"]["x"]])
        y = jnp.concatenate([ep["support"]["y"], ep["query"]["y"]])
        fast = params
        for _ in range(3):
            g = jax.grad(_loss, argnums=1)(model, fast, state, x, y)
            fast = tree_map(lambda p, gi: p - 0.02 * gi, fast, g)
        deltas.append(tree_map(lambda a, b: a - b, params, fast))
    _close(grads["params"], tree_map(lambda a, b: (a + b) / 2, *deltas), rtol=1e-4, atol=1e-6)


def test_protonets_match_numpy_reference():
    config = default_config()
    config.conv4.update(filters=4, conv="matmul")
    model, params, state = mm.build(config, "classification", None, (8, 8, 1), seed=0)
    net = ProtoNet(model)
    meta, mstate = net.init(params, state)
    ep = tree_map(lambda a: a[0], _class_batch(ways=4, shots=3, queries=5))
    loss, aux = net.task_loss(meta, mstate, ep, ways=4)
    x = jnp.concatenate([ep["support"]["x"], ep["query"]["x"]])
    z = np.asarray(model.trunk.apply(params["trunk"], state["trunk"], x, train=True)[0], np.float64)
    zs, zq = z[:12], z[12:]
    ys, yq = np.asarray(ep["support"]["y"]), np.asarray(ep["query"]["y"])
    protos = np.stack([zs[ys == k].mean(0) for k in range(4)])
    logits = -((zq[:, None, :] - protos[None]) ** 2).sum(-1)
    logp = (
        logits
        - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True))
        - logits.max(1, keepdims=True)
    )
    np.testing.assert_allclose(float(loss), -logp[np.arange(len(yq)), yq].mean(), rtol=1e-4)
    np.testing.assert_allclose(float(aux["metrics"]["metric"]), (logits.argmax(1) == yq).mean())


def test_bad_options_are_named():
    from mtl.errors import ConfigError

    with pytest.raises(ConfigError, match="meta.adapt must be one of all, head"):
        maml.MamlOptions(adapt="trunk").check("classification")
    with pytest.raises(ConfigError, match="per_step_bn.*ANIL"):
        maml.MamlOptions(adapt="head", per_step_bn=True).check("classification")
    with pytest.raises(ConfigError, match="head_hidden must be empty"):
        maml.MamlOptions(head_init="zero").check("classification", (32,))
    with pytest.raises(ConfigError, match="reptile"):
        Reptile(
            maml.Maml(
                None, dataclasses.replace(maml.MamlOptions(), per_step_bn=True), None, None, None
            )
        ).check()
