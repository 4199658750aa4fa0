"""Distillation, EWC, gradient reversal, progressive columns and the rotation task, by hand."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl.data.rotation import add_rotation_task, rotate
from mtl.errors import ConfigError, DataError
from mtl.tasks import tasks_from_config
from mtl.transfer import dann, distill, ewc, progressive


def np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_distillation_loss_matches_the_formula():
    rng = np.random.default_rng(0)
    student, teacher = rng.normal(size=(6, 5)), rng.normal(size=(6, 5)) * 3
    labels = rng.integers(0, 5, 6)
    mask = np.array([1, 1, 0, 1, 1, 1], bool)
    temp, alpha = 4.0, 0.7
    (task,) = tasks_from_config({"t": dict(head="classification", num_outputs=5)})
    got = distill.distillation_loss(
        task, jnp.asarray(student), jnp.asarray(teacher), labels, mask, temp, alpha
    )
    p_t = np.exp(np_log_softmax(teacher / temp))
    kl = (p_t * (np_log_softmax(teacher / temp) - np_log_softmax(student / temp))).sum(-1)
    ce = -np_log_softmax(student)[np.arange(6), labels]
    expected = alpha * temp**2 * kl[mask].mean() + (1 - alpha) * ce[mask].mean()
    assert float(got) == pytest.approx(expected, rel=1e-5)
    # No gradient flows into the teacher; the soft term vanishes when the student copies it.
    g = jax.grad(
        lambda t: distill.distillation_loss(task, jnp.asarray(student), t, labels, mask, temp, 1)
    )(jnp.asarray(teacher))
    assert np.all(np.asarray(g) == 0)
    same = distill.soft_cross_entropy(jnp.asarray(teacher), jnp.asarray(teacher), temp)
    np.testing.assert_allclose(same, 0.0, atol=1e-5)
    with pytest.raises(ConfigError, match="alpha must be in"):
        distill.check_options(2.0, 1.5)


def test_fisher_diagonal_and_penalty_by_hand():
    # Logistic regression with two classes: d log p(y|x) / dw = (onehot(y) - p) x^T.
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 3)).astype(np.float32)
    y = rng.integers(0, 2, 8)
    params = {"w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32)}
    logits_fn = lambda p, xb: xb @ p["w"]  # noqa: E731
    batches = [(jnp.asarray(x[:4]), jnp.asarray(y[:4])), (jnp.asarray(x[4:]), jnp.asarray(y[4:]))]
    fisher = ewc.fisher_diagonal(logits_fn, params, batches, jax.random.key(0), empirical=True)
    p = np.exp(np_log_softmax(x @ np.asarray(params["w"])))
    per_example = np.einsum("bi,bc->bic", x, np.eye(2)[y] - p)
    np.testing.assert_allclose(fisher["w"], np.mean(per_example**2, 0), rtol=1e-4, atol=1e-7)
    # Inputs as a dict of arrays (text: token ids and masks) give the same Fisher.
    dict_fn = lambda p, xb: (xb["a"] + xb["b"]) @ p["w"]  # noqa: E731
    split = [({"a": xb * 0.25, "b": xb * 0.75}, yb) for xb, yb in batches]
    as_dict = ewc.fisher_diagonal(dict_fn, params, split, jax.random.key(0), empirical=True)
    np.testing.assert_allclose(as_dict["w"], fisher["w"], rtol=1e-5, atol=1e-8)
    # True Fisher: labels sampled from the model; its expectation is sum_c p_c (e_c - p)^2 x^2.
    true = ewc.fisher_diagonal(logits_fn, params, batches * 200, jax.random.key(1))
    expected = np.mean(
        sum(
            p[:, c, None, None] * np.einsum("bi,bc->bic", x, np.eye(2)[c] - p) ** 2 for c in (0, 1)
        ),
        0,
    )
    np.testing.assert_allclose(true["w"], expected, rtol=0.15, atol=2e-3)

    anchor = {"w": params["w"] + 0.5}
    penalty = ewc.ewc_penalty(params, anchor, fisher, strength=3.0)
    assert float(penalty) == pytest.approx(1.5 * float(np.sum(np.asarray(fisher["w"]) * 0.25)))
    grad = jax.grad(lambda q: ewc.ewc_penalty(q, anchor, fisher, 3.0))(params)
    np.testing.assert_allclose(grad["w"], 3.0 * np.asarray(fisher["w"]) * -0.5, rtol=1e-5)


def test_gradient_reversal_flips_and_scales_gradients():
    x = jnp.asarray([1.0, -2.0, 3.0])
    np.testing.assert_array_equal(dann.gradient_reversal(x, 0.3), x)
    g = jax.grad(lambda v: jnp.sum(dann.gradient_reversal(v, 0.3) * jnp.asarray([1.0, 2.0, 3.0])))(
        x
    )
    np.testing.assert_allclose(g, [-0.3, -0.6, -0.9], rtol=1e-6)

    # A traced scale (Ganin's schedule) under jit.
    @jax.jit
    def grad_at(progress):
        scale = dann.ganin_lambda(progress)
        return jax.grad(lambda v: jnp.sum(dann.gradient_reversal(v, scale)))(x), scale

    g, scale = grad_at(0.5)
    np.testing.assert_allclose(g, -float(scale) * np.ones(3), rtol=1e-6)
    assert float(dann.ganin_lambda(0.0)) == 0.0 and float(dann.ganin_lambda(1.0)) > 0.99
    loss = dann.domain_loss(jnp.asarray([[0.0], [2.0]]), jnp.asarray([0, 1]))
    assert float(loss) == pytest.approx((np.log(2) + np.log1p(np.exp(-2.0))) / 2, rel=1e-6)


def test_progressive_net_trains_column_two_and_leaves_column_one_bit_identical():
    key1, key2, key3 = jax.random.split(jax.random.key(0), 3)
    col1 = progressive.init_column(key1, (12, 16, 8), num_classes=3, num_previous=0)
    col2 = progressive.init_column(key2, (12, 16, 8), num_classes=4, num_previous=1)
    x = jax.random.normal(key3, (10, 12))
    y = jnp.arange(10) % 4
    frozen_copy = jax.tree.map(np.array, col1)

    def loss(new, frozen):
        logits = progressive.new_column_logits([frozen], new, x)
        return jnp.mean(-jax.nn.log_softmax(logits)[jnp.arange(10), y])

    grads_frozen = jax.grad(loss, argnums=1)(col2, col1)
    assert all(float(jnp.max(jnp.abs(g))) == 0 for g in jax.tree.leaves(grads_frozen))
    step = jax.jit(
        lambda new: jax.tree.map(lambda p, g: p - 0.1 * g, new, jax.grad(loss)(new, col1))
    )
    start = float(loss(col2, col1))
    for _ in range(30):
        col2 = step(col2)
    assert float(loss(col2, col1)) < 0.7 * start
    jax.tree.map(np.testing.assert_array_equal, col1, frozen_copy)
    # The laterals are used: column 2's output depends on column 1's hidden units.
    bumped = jax.tree.map(lambda a: a, col1)
    bumped["layers"][0]["w"] = bumped["layers"][0]["w"] + 1.0
    assert not np.allclose(
        progressive.forward([bumped, col2], x)[1], progressive.forward([col1, col2], x)[1]
    )
    # Column 1's own output never depends on column 2.
    other = jax.tree.map(lambda a: a * 2.0, col2)
    np.testing.assert_array_equal(
        progressive.forward([col1, col2], x)[0], progressive.forward([col1, other], x)[0]
    )


def test_rotation_task_labels():
    rng = np.random.default_rng(0)
    images = rng.random((5, 6, 6, 1)).astype(np.float32)
    data = {
        "inputs": images,
        "labels": {"a": np.arange(5, dtype=np.int32)},
        "masks": {"a": np.array([1, 1, 0, 1, 1], bool)},
    }
    out = add_rotation_task(data, seed=3)
    assert out["inputs"].shape == (10, 6, 6, 1)
    np.testing.assert_array_equal(out["labels"]["rotation"][:5], 0)
    k = out["labels"]["rotation"][5:]
    assert set(k) <= {1, 2, 3}
    for i in range(5):
        # Rotating back by k quarter turns gives the original image.
        np.testing.assert_array_equal(np.rot90(out["inputs"][5 + i], -k[i], axes=(0, 1)), images[i])
    np.testing.assert_array_equal(out["masks"]["a"], [1, 1, 0, 1, 1, 0, 0, 0, 0, 0])
    assert out["masks"]["rotation"].all()
    np.testing.assert_array_equal(rotate(images, np.full(5, 2))[0], images[0, ::-1, ::-1])
    with pytest.raises(DataError, match="square images"):
        add_rotation_task({**data, "inputs": rng.random((5, 6, 4, 1))})


def toy_supervised_config(num_steps: int):
    """A one-task supervised config (tiny MLP trunk) for data handed to `supervised.parts`."""
    import ml_collections

    from mtl import optim
    from mtl.models import default_config as model_config
    from mtl.weighting import default_config as weighting_config

    config = ml_collections.ConfigDict()
    config.update(trainer="supervised", seed=0, num_steps=num_steps, batch_size=24)
    config.update(eval_batch_size=64, log_every=1)
    config.data = ml_collections.ConfigDict(dict(name="omniglot_alphabets"))  # never loaded
    config.model = model_config()
    config.model.trunk = "mlp"
    config.model.mlp.hidden = (16,)
    config.tasks = ml_collections.ConfigDict(
        {"t": dict(head="classification", num_outputs=2, metrics=("accuracy",))}
    )
    config.weighting = weighting_config()
    config.optimizer = optim.default_config()
    config.optimizer.learning_rate = 0.05
    config.checkpoint = ml_collections.ConfigDict(dict(every=1000, keep=1))
    return config


def test_engine_run_learns_a_separable_toy_reproducibly(tmp_path):
    """What the transfer experiments' private `fit` loop once promised, from the engine's one
    loop: a supervised run learns a separable toy, and batches depend only on (seed, step)."""
    import json

    from mtl import checkpoint
    from mtl.data.sources import MultiTaskData
    from mtl.runs import supervised
    from mtl.train.loop import run

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int32)
    data = {"inputs": x, "labels": {"t": y}, "masks": {"t": np.ones(200, bool)}}
    config = toy_supervised_config(num_steps=150)

    def trained(workdir):
        parts = supervised.parts(config, data=MultiTaskData(data, data))
        return run(supervised.experiment(parts), str(workdir))

    result = trained(tmp_path / "a")
    assert result["test"]["t"]["accuracy"] > 0.95
    lines = [json.loads(v) for v in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    losses = [v["train/loss/t"] for v in lines if "train/loss/t" in v]
    assert len(losses) == 150 and losses[-1] < 0.5 * losses[0]
    trained(tmp_path / "b")
    jax.tree.map(
        np.testing.assert_array_equal,
        checkpoint.final_state(str(tmp_path / "a"))["params"],
        checkpoint.final_state(str(tmp_path / "b"))["params"],
    )


def test_target_domain_copies_every_image_under_new_label_fields():
    from mtl.data.omniglot_domains import add_target_domain, transform

    rng = np.random.default_rng(0)
    images = rng.random((5, 6, 6, 1)).astype(np.float32)
    data = {
        "inputs": images,
        "labels": {"a": np.array([0, 1, -1, 2, 1], np.int32)},
        "masks": {"a": np.array([1, 1, 0, 1, 1], bool)},
    }
    out = add_target_domain(data, "negative")
    assert out["inputs"].shape == (10, 6, 6, 1)
    np.testing.assert_array_equal(out["inputs"][5:], 1.0 - images)
    np.testing.assert_array_equal(out["masks"]["a"], [1, 1, 0, 1, 1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(out["masks"]["a_negative"], [0, 0, 0, 0, 0, 1, 1, 0, 1, 1])
    np.testing.assert_array_equal(out["labels"]["a_negative"][5:], data["labels"]["a"])
    np.testing.assert_array_equal(transform(images, "shifted")[:, 4:, 4:], images[:, :2, :2])
    noisy = transform(images, "noisy", seed=3)
    np.testing.assert_array_equal(noisy, transform(images, "noisy", seed=3))
    assert noisy.dtype == np.float32
    with pytest.raises(ConfigError, match="target domain"):
        transform(images, "inverted")
    with pytest.raises(DataError, match="a_negative"):
        add_target_domain(out, "negative")


def test_omniglot_source_checks_its_options_before_loading():
    from mtl.data import sources

    with pytest.raises(ConfigError, match="data.target_domain"):
        sources.omniglot_alphabets(data_dir="/nonexistent", target_domain="inverted")
    with pytest.raises(ConfigError, match="data.pooled_tasks"):
        sources.omniglot_alphabets(data_dir="/nonexistent", pooled_tasks=("drawer",))


def test_pooled_tasks_label_every_image_over_all_alphabets():
    from mtl.data.omniglot import OmniglotImages, alphabet_tasks

    # Two alphabets (2 and 3 characters), two drawers each; drawer 2 is the test set.
    alphabet = np.repeat([0, 0, 1, 1, 1], 2).astype(np.int32)
    character = np.repeat([0, 1, 0, 1, 2], 2).astype(np.int32)
    drawer = np.tile([1, 2], 5).astype(np.int32)
    images = OmniglotImages(
        np.zeros((10, 4, 4, 1), np.float32), ("A", "B"), alphabet, character, drawer
    )
    train, test, classes = alphabet_tasks(images, (2,), pooled=("alphabet", "character"))
    assert classes == {"A": 2, "B": 3, "alphabet": 2, "character": 5}
    np.testing.assert_array_equal(train["labels"]["alphabet"], [0, 0, 1, 1, 1])
    np.testing.assert_array_equal(test["labels"]["character"], [0, 1, 2, 3, 4])
    assert train["masks"]["alphabet"].all() and test["masks"]["character"].all()
    np.testing.assert_array_equal(train["masks"]["A"], [1, 1, 0, 0, 0])  # unchanged
    with pytest.raises(ConfigError, match="pooled_tasks"):
        alphabet_tasks(images, (2,), pooled=("drawer",))


def test_distill_step_trains_the_student_on_the_teacher_outputs():
    import optax

    from mtl.models import build_model, default_config
    from mtl.models.functional import PureModule
    from mtl.runs import distillation as distill_trainer
    from mtl.runs.supervised_step import make_steps
    from tests.helpers import sum_of_losses, toy_batch

    tasks = tasks_from_config(
        {"a": dict(head="classification", num_outputs=4), "b": dict(num_outputs=3)}
    )
    config = default_config()
    config.trunk = "mlp"  # a wide teacher, a narrow student (the e2e test uses conv4 -> MLP)
    config.mlp.hidden = (32, 32)
    teacher = build_model(config, tasks, (8, 8, 1), seed=1)
    t_trunk, t_params, t_state = PureModule.split(teacher.trunk)
    t_heads = {n: PureModule.split(h) for n, h in teacher.heads.items()}

    def apply(variables, x):
        z, _ = t_trunk.apply(variables["trunk"], t_state, x, train=False)
        return {n: t_heads[n][0].apply(variables["heads"][n], {}, z)[0] for n in ("a", "b")}

    variables = {"trunk": t_params, "heads": {n: t_heads[n][1] for n in ("a", "b")}}
    config.trunk = "mlp"
    config.mlp.hidden = (16,)
    student = build_model(config, tasks, (8, 8, 1), seed=2)
    loss_fn = distill_trainer.distill_loss_fn(temperature=3.0, alpha=0.6)
    steps = make_steps(student, tasks, optax.sgd(0.1), sum_of_losses(), 0, loss_fn)
    wrapped = distill_trainer.with_teacher(steps, apply, variables)
    state = wrapped.init()
    batch = jax.tree.map(jnp.asarray, toy_batch(16))
    s_trunk, s_params, s_state = PureModule.split(student.trunk)
    z, _ = s_trunk.apply(s_params, s_state, batch["inputs"], train=True)
    teacher_out = apply(variables, batch["inputs"])
    new_state, metrics = jax.jit(wrapped.train_step)(state, batch)
    for t in tasks:
        head, head_params, _ = PureModule.split(student.heads[t.name])
        out = head.apply(head_params, {}, z)[0]
        expected = distill.distillation_loss(
            t, out, teacher_out[t.name], batch["labels"][t.name], batch["masks"][t.name], 3.0, 0.6
        )
        np.testing.assert_allclose(metrics[f"loss/{t.name}"], expected, rtol=1e-5)
    # The teacher is carried unchanged; evaluation reads the student only.
    jax.tree.map(np.testing.assert_array_equal, new_state.extras["teacher"], variables)
    sums = wrapped.eval_step(new_state, batch)
    assert set(sums) == {"a", "b"}


def test_with_ewc_adds_the_penalty_gradient_to_any_method():
    from mtl.weighting import get_weighting
    from tests.test_weighting import RNG, make_objective, make_problem

    params, data = make_problem()
    anchor = jax.tree.map(lambda p: p + 0.3, params["shared"])
    fisher = jax.tree.map(lambda p: jnp.full_like(p, 2.0), params["shared"])
    for name in ("equal", "pcgrad"):
        method = get_weighting(name)
        plain, _ = method.update(make_objective(params, data), method.init(3), RNG)
        wrapped = ewc.with_ewc(method, anchor, fisher, strength=5.0)
        out, _ = wrapped.update(make_objective(params, data), wrapped.init(3), RNG)
        # d/dtheta of 5/2 * 2 * (theta - anchor)^2 = 10 * (theta - anchor) = -3.
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b - 3.0, rtol=1e-5, atol=1e-5),
            out.shared_grads,
            plain.shared_grads,
        )
        jax.tree.map(np.testing.assert_array_equal, out.task_grads, plain.task_grads)
