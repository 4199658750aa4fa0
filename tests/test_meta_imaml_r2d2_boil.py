"""iMAML against the exact meta-gradient, the ridge head against its closed form, BOIL and
the LoRA inner loop: what adapts and what stays."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mtl.errors import ConfigError
from mtl.meta import maml, methods
from mtl.meta import model as mm
from mtl.meta.imaml import IMamlOptions
from mtl.meta.r2d2 import R2D2Options, ridge_weights
from mtl.models import default_config
from mtl.models.functional import PureModule
from mtl.models.heads import HEADS


class Identity(nnx.Module):
    """A trunk without parameters: the network is then linear regression in the head."""

    def __init__(self, features: int):
        self.out_features = features

    def __call__(self, x, *, train: bool):
        del train
        return x


def _linear_regression(features=3):
    trunk, trunk_params, trunk_state = PureModule.split(Identity(features))
    head = HEADS.get("regression")(features, 1, rngs=nnx.Rngs(0))
    pure_head, head_params, _ = PureModule.split(head)
    model = mm.MetaModel(trunk, pure_head, "regression", features)
    return model, {"trunk": trunk_params, "head": head_params}, {"trunk": trunk_state}


def test_imaml_meta_gradient_equals_the_exact_one_where_the_inner_problem_is_solved():
    """Linear regression: the proximal support problem has a closed-form minimiser, so the
    exact meta-gradient is the gradient through that formula (second order, 'unrolled to
    convergence'); iMAML reaches it by gradient steps and conjugate gradient."""
    lam, n, m, d = 2.0, 10, 7, 3
    model, params, state = _linear_regression(d)
    rng = np.random.default_rng(0)
    xs, xq = rng.normal(size=(n, d)), rng.normal(size=(m, d))
    w_true = rng.normal(size=(d, 1))
    ys, yq = xs @ w_true + 0.1 * rng.normal(size=(n, 1)), xq @ w_true
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    episode = {"support": {"x": f32(xs), "y": f32(ys)}, "query": {"x": f32(xq), "y": f32(yq)}}

    def exact_query_loss(head):
        theta = jnp.concatenate([head["out"]["kernel"][:, 0], head["out"]["bias"]])
        a = jnp.concatenate([f32(xs), jnp.ones((n, 1))], 1)
        # argmin |a phi - y|^2 / n + lam / 2 |phi - theta|^2
        phi = jnp.linalg.solve(2 * a.T @ a / n + lam * jnp.eye(d + 1),
                               2 * a.T @ f32(ys)[:, 0] / n + lam * theta)  # fmt: skip
        aq = jnp.concatenate([f32(xq), jnp.ones((m, 1))], 1)
        return jnp.mean(jnp.square(aq @ phi - f32(yq)[:, 0]))

    exact = jax.grad(exact_query_loss)(params["head"])
    opts = IMamlOptions(inner_lr=0.1, inner_steps=400, imaml_lambda=lam, cg_steps=20)
    learner = opts.build(model, params, state)
    meta, state = learner.init(params, state)
    batch = jax.tree.map(lambda a: a[None], episode)
    grads, aux = jax.jit(lambda m, s, b: learner.meta_grads(m, s, b, ways=1, step=0))(
        meta, state, batch
    )
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
        grads["params"]["head"],
        exact,
    )
    # Too few CG steps give another (worse) answer: the test can fail.
    rough = IMamlOptions(inner_lr=0.1, inner_steps=400, imaml_lambda=lam, cg_steps=1)
    rough_learner = rough.build(model, params, state)
    rough_grads, _ = rough_learner.meta_grads(meta, state, batch, ways=1, step=0)
    assert not np.allclose(rough_grads["params"]["head"]["out"]["kernel"], exact["out"]["kernel"],
                           rtol=1e-3)  # fmt: skip


def test_imaml_with_a_prototype_head_equals_the_gradient_through_the_converged_inner_loop():
    """A prototype head makes the anchor a function of the trunk (`initial` computes it): the
    implicit meta-gradient pulled back through it must equal the gradient through 100 unrolled
    proximal inner steps (λ = 10: each step contracts by half, so they converge), MLP with
    batch norm."""
    from mtl.meta.imaml import proximal

    lam, lr, steps = 10.0, 0.05, 100
    opts = dict(method="imaml", ways=3, head_init="proto", imaml_lambda=lam, inner_lr=lr,
                inner_steps=steps, cg_steps=30)  # fmt: skip
    learner, meta, state = _built_learner(opts)
    batch = _episodes(tasks=1)
    episode = jax.tree.map(lambda a: a[0], batch)
    support, query = episode["support"], episode["query"]
    maml_ = learner.maml

    def unrolled_query_loss(meta):
        anchor = maml_.initial(meta, state, support, ways=3, train_bn=True)

        def support_objective(fast):
            out, _ = maml_.forward(meta, state, fast, support["x"], 0, True)
            return proximal(maml_.model.loss(out, support["y"]), fast, anchor, lam)

        step = lambda _, fast: jax.tree.map(
            lambda f, g: f - lr * g, fast, jax.grad(support_objective)(fast)
        )
        adapted = jax.lax.fori_loop(0, steps, step, anchor)
        out, _ = maml_.forward(meta, state, adapted, query["x"], 0, True)
        return maml_.model.loss(out, query["y"])

    exact = jax.jit(jax.grad(unrolled_query_loss))(meta)
    implicit, _ = jax.jit(lambda m: learner.meta_grads(m, state, batch, ways=3, step=0))(meta)
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(exact))
    assert scale > 1e-3  # the trunk does get a meta-gradient through the prototypes
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5 * scale), implicit, exact)


def test_ridge_head_is_the_closed_form_ridge_regression():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)
    y = jax.nn.one_hot(jnp.asarray([0, 1, 2, 0, 1, 2]), 3)
    lam = 0.7
    primal = jnp.linalg.solve(x.T @ x + lam * jnp.eye(4), x.T @ y)  # (X'X + λI)^-1 X'Y
    np.testing.assert_allclose(ridge_weights(x, y, lam), primal, rtol=1e-4, atol=1e-5)


def _mlp_model(outputs):
    """A small MLP with batch norm: compiles in a fraction of conv4's time."""
    config = default_config()
    config.trunk = "mlp"
    config.mlp.update(hidden=(32, 16), batch_norm=True)
    return mm.build(config, "classification", outputs, (8, 8, 1), seed=0)


def _built_learner(meta):
    """`(learner, meta-parameters, model state)` of `meta` on the small MLP."""
    model, params, state = _mlp_model(methods.num_outputs(meta, "classification"))
    learner = methods.build(meta, model, params, state)
    return (learner, *learner.init(params, state))


def _episodes(tasks=8, ways=3, shots=2, queries=3, seed=0):
    """Classes that differ in their mean image: learnable in a few meta-steps."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(ways, 8, 8, 1))

    def part(k):
        y = np.tile(np.repeat(np.arange(ways), k), (tasks, 1))
        x = centers[y] + 0.5 * rng.normal(size=(*y.shape, 8, 8, 1))
        return {"x": jnp.asarray(x, jnp.float32), "y": jnp.asarray(y, jnp.int32)}

    return {"support": part(shots), "query": part(queries)}


@pytest.mark.parametrize(
    "meta",
    [
        dict(method="r2d2"),
        dict(method="imaml", inner_lr=0.3, inner_steps=10, imaml_lambda=1.0),
        dict(method="maml", adapt="body", inner_lr=0.5),
    ],
)
def test_new_learners_lower_the_query_loss(meta):
    import optax

    meta = dict(ways=3) | meta
    learner, meta_params, state = _built_learner(meta)
    tx = optax.adam(5e-2)
    opt_state = tx.init(meta_params)

    @jax.jit
    def step(meta_params, opt_state, state, batch):
        grads, aux = learner.meta_grads(meta_params, state, batch, ways=3, step=0)
        updates, opt_state = tx.update(grads, opt_state, meta_params)
        return optax.apply_updates(meta_params, updates), opt_state, aux

    held_out = _episodes(seed=99)
    query_loss = jax.jit(
        lambda m, s: learner.meta_grads(m, s, held_out, ways=3, step=0)[1]["metrics"]["loss"]
    )
    before = float(query_loss(meta_params, state))
    for i in range(12):
        meta_params, opt_state, _ = step(meta_params, opt_state, state, _episodes(seed=i))
    after = float(query_loss(meta_params, state))
    assert after < 0.8 * before, (before, after)
    adapted, _ = learner.adapt(meta_params, state, jax.tree.map(lambda a: a[0],
                               _episodes()["support"]), ways=3, steps=1, train_bn=True)  # fmt: skip
    logits = learner.predict(meta_params, state, adapted, _episodes()["query"]["x"][0], ways=3,
                             steps=1, train_bn=True)  # fmt: skip
    assert logits.shape == (9, 3)


def test_boil_adapts_the_body_and_keeps_the_head():
    model, params, state = _mlp_model(3)
    learner = maml.build(model, params, state, maml.MamlOptions(adapt="body", inner_lr=0.5))
    meta, state = learner.init(params, state)
    support = jax.tree.map(lambda a: a[0], _episodes()["support"])
    fast, _ = learner.adapt(meta, state, support, ways=3, steps=2, train_bn=True)
    assert set(fast) == {"trunk"}  # the head is meta["params"]["head"], fixed
    moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), fast["trunk"], meta["params"]["trunk"])
    assert all(jax.tree.leaves(moved))


def test_lora_inner_loop_adapts_only_the_factors_and_the_head():
    config = default_config()
    config.trunk = "mlp"
    config.mlp.update(hidden=(16, 16), batch_norm=False)
    opts = maml.MamlOptions(adapt="lora", lora_rank=2, lora_targets=r"layers/\d+$", inner_lr=0.5)
    model, params, state = mm.build(config, "classification", 3, (8, 8, 1), seed=0,
                                    lora=opts.lora())  # fmt: skip
    learner = maml.build(model, params, state, opts)
    meta, state = learner.init(params, state)
    support = jax.tree.map(lambda a: a[0], _episodes()["support"])
    fast, _ = learner.adapt(meta, state, support, ways=3, steps=1, train_bn=True)
    trunk_paths = {
        "/".join(str(getattr(k, "key", k)) for k in path)
        for path, leaf in jax.tree_util.tree_flatten_with_path(fast["trunk"])[0]
    }
    assert trunk_paths and all(p.endswith(("lora_a", "lora_b")) for p in trunk_paths)
    with pytest.raises(ConfigError, match="lora_rank"):
        maml.MamlOptions(adapt="lora").check("classification")
    with pytest.raises(ConfigError, match="BOIL"):
        maml.MamlOptions(adapt="body", head_init="zero").check("classification")
    with pytest.raises(ConfigError, match="imaml_lambda"):
        IMamlOptions(imaml_lambda=0.0).check("classification")
    with pytest.raises(ConfigError, match="classification"):
        R2D2Options().check("regression")


@pytest.mark.parametrize(
    "meta",
    [
        dict(method="r2d2"),
        dict(method="imaml", head_init="zero", inner_lr=0.3, inner_steps=2, cg_steps=2),
        dict(method="maml", adapt="body", inner_lr=0.5),
        dict(method="maml", head_init="zero", inner_lr=0.5, inner_steps=2),
    ],
)
def test_new_learners_train_step_on_eight_devices_equals_one_device(meta):
    import optax

    from mtl import parallel
    from mtl.runs import meta as meta_run
    from mtl.train.state import TrainState

    meta = dict(ways=3) | meta
    learner, meta_params, state = _built_learner(meta)
    batch = _episodes(tasks=8)
    out = []
    for devices in (1, 8):
        mesh = parallel.make_mesh({"data": devices})
        step = jax.jit(meta_run.make_train_step(learner, optax.sgd(0.1), mesh, ways=3,
                                                metric="accuracy"))  # fmt: skip
        start = TrainState.create(meta_params, state, optax.sgd(0.1), seed=0, losses=("meta",))
        new, _ = step(start, parallel.to_global(batch, parallel.batch_sharding(mesh)))
        out.append(jax.device_get(new.params))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), *out)


@pytest.mark.parametrize("head_init", ["learned", "zero"])
def test_meta_test_curves_on_eight_devices_equal_one_device(head_init):
    """Each device adapts its own episodes: no gradient may be summed over devices."""
    from mtl import parallel
    from mtl.runs import meta_eval

    meta = dict(method="maml", ways=3, head_init=head_init, inner_lr=0.5)
    learner, meta_params, state = _built_learner(meta)
    batch = _episodes(tasks=8)
    curves = []
    for devices in (1, 8):
        mesh = parallel.make_mesh({"data": devices})
        curve = meta_eval.make_curve_step(learner, mesh, ways=3, steps=2)
        sharded = parallel.to_global(batch, parallel.batch_sharding(mesh))
        curves.append(np.asarray(curve(meta_params, state, sharded)))
    np.testing.assert_allclose(*curves, atol=1e-6)
