"""Multi-task architectures beside hard sharing (mtl/models/architectures): what each computes,
how its parameters split into shared and task-specific, training on 8 devices, runs and errors."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import omniglot_mtl
from mtl import checkpoint, parallel
from mtl.errors import ConfigError
from mtl.models import build_model, default_config
from mtl.models.architectures import mixture
from mtl.models.architectures.cross_stitch import initial_units
from mtl.runs import supervised
from mtl.runs.supervised_step import make_steps
from mtl.train import loop
from mtl.weighting import get_weighting
from tests.helpers import sum_of_losses, toy_batch, toy_tasks

ARCHITECTURES = ("mmoe", "dselect_k", "cgc", "cross_stitch", "mtan")


TEXT_SHAPE = {"input_ids": (6,), "attention_mask": (6,)}


def _model(architecture: str, filters: int = 4, trunk: str = "conv4", **options):
    config = default_config()
    config.conv4.filters = filters
    config.trunk = trunk
    config.bert.update(vocab_size=50, hidden_size=16, num_layers=2, num_heads=2,
                       intermediate_size=32, max_position_embeddings=16, dropout=0.0,
                       attention_dropout=0.0)  # fmt: skip
    config.architecture = architecture
    config.architectures[architecture].update(options)
    shape = TEXT_SHAPE if trunk == "bert" else (8, 8, 1)
    return build_model(config, toy_tasks(), shape, seed=0)


def _text_batch(n: int, seed: int) -> dict:
    batch = toy_batch(n, seed=seed)
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 50, (n, 6)).astype(np.int32)
    return {**batch, "inputs": {"input_ids": ids, "attention_mask": np.ones_like(ids)}}


def _train(architecture: str, mesh, num_steps: int, trunk: str = "conv4"):
    tasks = toy_tasks()
    # SGD, not Adam: Adam turns the rounding noise in gradients that are 0 in exact arithmetic
    # (a conv bias before batch norm) into full-size steps of either sign.
    lr = 0.02 if trunk == "bert" else 0.1
    steps = make_steps(
        _model(architecture, trunk=trunk), tasks, optax.sgd(lr), sum_of_losses(), seed=0
    )
    compiled = loop.compile_steps(steps.init, steps.train_step, mesh, rules=())
    state, history = compiled.init(), []
    make_batch = _text_batch if trunk == "bert" else lambda n, seed: toy_batch(n, seed=seed)
    for step in range(num_steps):
        batch = parallel.to_global(make_batch(32, seed=step % 2), compiled.data_sharding)
        state, metrics = compiled.train_step(state, batch)
        history.append(jax.device_get(metrics))
    return jax.device_get(state), history


@pytest.mark.parametrize(
    "architecture, trunk",
    [*((a, "conv4") for a in ARCHITECTURES), ("mmoe", "bert"), ("cgc", "bert")],
)
def test_trains_on_eight_devices_as_on_one(architecture, trunk):
    one, one_history = _train(architecture, parallel.make_mesh({"data": 1}), 8, trunk)
    eight, eight_history = _train(architecture, parallel.make_mesh({"data": 8}), 8, trunk)
    for a, b in zip(one_history, eight_history, strict=True):
        for key in a:
            assert np.isfinite(a[key]), key
            np.testing.assert_allclose(a[key], b[key], atol=1e-5, err_msg=key)
    as_numbers = lambda x: (
        jax.random.key_data(x)
        if jax.dtypes.issubdtype(  # noqa: E731
            x.dtype, jax.dtypes.prng_key
        )
        else x
    )  # bert's dropout streams
    for tree in ("params", "model_state"):
        jax.tree.map(
            lambda x, y: np.testing.assert_allclose(as_numbers(x), as_numbers(y), atol=1e-5),
            getattr(one, tree),
            getattr(eight, tree),
        )
    # Two batches alternate: after eight steps every task's loss is below its first value.
    first = {k: v for k, v in one_history[0].items() if k.startswith("loss/")}
    last = {k: v for k, v in one_history[-2].items() if k.startswith("loss/")}
    assert all(last[k] < first[k] for k in first), (first, last)


def test_each_architecture_splits_shared_and_task_parameters():
    tasks = [t.name for t in toy_tasks()]
    mmoe = _model("mmoe", num_experts=3)
    assert len(mmoe.trunk.experts) == 3 and set(mmoe.heads) == set(tasks)
    cgc = _model("cgc", num_experts=2, task_experts=2)
    assert len(cgc.trunk.experts) == 2
    assert all(len(cgc.heads[t].own.experts) == 2 for t in tasks)  # task experts: the head's
    stitch = _model("cross_stitch")
    assert len(stitch.trunk.columns) == len(tasks)
    assert stitch.trunk.units.shape == (4, len(tasks), len(tasks))  # conv4: one unit per stage
    mtan = _model("mtan")
    assert len(mtan.heads[tasks[0]].masks) == 4


def test_cgc_task_experts_keep_statistics_and_learn_only_from_their_task():
    tasks = toy_tasks()
    steps = make_steps(_model("cgc"), tasks, optax.sgd(0.1), get_weighting("pcgrad"), seed=0)
    state = steps.init()
    assert set(state.model_state) == {"trunk", "heads"}
    batch = toy_batch(32)
    after, _ = jax.jit(steps.train_step)(state, batch)
    before_stats = state.model_state["heads"]["a"]
    moved = jax.tree.map(lambda x, y: float(jnp.abs(x - y).max()), before_stats,
                         after.model_state["heads"]["a"])  # fmt: skip
    assert max(jax.tree.leaves(moved)) > 0  # batch-norm statistics of task a's own expert

    # Task a's own experts get exactly the gradient of task a's loss (PCGrad projects only the
    # shared experts' per-task gradients).
    obj = steps.objective(state.params, state.model_state, batch, True)

    def loss_a(own):
        heads = {**obj.task_specific, "a": {**obj.task_specific["a"], "own": own}}
        z, _ = obj.representation(obj.shared)
        return obj.task_losses(heads, z)[0][0]

    expected = jax.grad(loss_a)(state.params["heads"]["a"]["own"])
    got = jax.tree.map(lambda old, new: (old - new) / 0.1, state.params["heads"]["a"]["own"],
                       after.params["heads"]["a"]["own"])  # fmt: skip
    jax.tree.map(lambda g, e: np.testing.assert_allclose(g, e, atol=1e-5), got, expected)


@pytest.mark.parametrize(
    "name, options", [("mgda", {"wrt": "representation"}), ("gradnorm", {"wrt": "representation"})]
)
def test_methods_on_the_representation_read_every_expert(name, options):
    """Under MMoE the representation is a tuple (one array per expert); methods that take
    gradients at the representation handle it, and only the experts' outputs are in it."""
    tasks = toy_tasks()
    steps = make_steps(_model("mmoe"), tasks, optax.sgd(0.1), get_weighting(name, options), 0)
    state, metrics = jax.jit(steps.train_step)(steps.init(), toy_batch(32))
    assert all(np.isfinite(float(v)) for v in metrics.values())


def test_dselect_k_smooth_step_and_selectors_by_hand():
    gamma = 1.0
    t = jnp.array([-1.0, -0.5, 0.0, 0.25, 0.5, 2.0])
    cubic = lambda x: -2 * x**3 + 1.5 * x + 0.5  # noqa: E731
    np.testing.assert_allclose(
        mixture.smooth_step(t, gamma), [0.0, 0.0, 0.5, cubic(0.25), 1.0, 1.0], atol=1e-6
    )
    assert mixture.binary_codes(4) == ((0, 0), (1, 0), (0, 1), (1, 1))
    gate = mixture.DSelectKGate(3, 4, k=1, gamma=gamma, rngs=__import__("flax").nnx.Rngs(0))
    # Saturated logits pick one expert exactly: bit 0 set, bit 1 clear -> expert 1.
    gate.selector_logits.kernel[...] = jnp.zeros((3, 2))
    gate.selector_logits.bias[...] = jnp.array([5.0, -5.0])
    weights = gate(jnp.ones((2, 3)))
    np.testing.assert_array_equal(weights, [[0.0, 1.0, 0.0, 0.0]] * 2)
    # Logits in the cubic part: weights are products of S and 1 - S per bit and sum to 1.
    gate.selector_logits.bias[...] = jnp.array([0.25, 0.0])
    s0, s1 = cubic(0.25), 0.5
    np.testing.assert_allclose(
        gate(jnp.ones((1, 3)))[0],
        [(1 - s0) * (1 - s1), s0 * (1 - s1), (1 - s0) * s1, s0 * s1],
        atol=1e-6,
    )


def test_mmoe_gate_is_a_softmax_over_experts_and_one_expert_is_hard_sharing():
    model = _model("mmoe", num_experts=3)
    x = jnp.asarray(toy_batch(5)["inputs"])
    z = model.trunk(x)
    head = model.heads["a"]
    weights = head.gate(x.reshape(5, -1))
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-6)
    mixed = sum(weights[:, e : e + 1] * z[e] for e in range(3))
    np.testing.assert_allclose(head(z, inputs=x), head.tower(mixed), atol=1e-5)
    single = _model("mmoe", num_experts=1)
    z1 = single.trunk(x)
    np.testing.assert_allclose(
        single.heads["a"](z1, inputs=x), single.heads["a"].tower(z1[0]), atol=1e-6
    )


def test_cross_stitch_with_identity_units_is_independent_columns():
    units = initial_units(2, 3, 0.9)
    np.testing.assert_allclose(units[0], [[0.9, 0.05, 0.05], [0.05, 0.9, 0.05],
                                          [0.05, 0.05, 0.9]])  # fmt: skip
    model = _model("cross_stitch", self_weight=1.0)
    x = jnp.asarray(toy_batch(4)["inputs"])
    for column, z in zip(model.trunk.columns, model.trunk(x), strict=True):
        np.testing.assert_allclose(z, column(x, train=False), atol=1e-6)
    mixed = _model("cross_stitch")  # 0.9 / 0.05: columns read each other
    z = mixed.trunk(x)
    assert not np.allclose(z[0], mixed.trunk.columns[0](x, train=False), atol=1e-4)


def test_mtan_masks_scale_every_stage_of_the_shared_trunk():
    model = _model("mtan")
    x = jnp.asarray(toy_batch(4)["inputs"])
    stages = model.trunk(x)
    assert [s.shape[1:3] for s in stages] == [(4, 4), (2, 2), (1, 1), (1, 1)]
    head = model.heads["a"]
    # Masks open fully (sigmoid -> 1): the head reads the trunk's own last features.
    for mask in head.masks:
        mask.outer.bias[...] = jnp.full_like(mask.outer.bias[...], 50.0)
    np.testing.assert_allclose(
        head(stages, inputs=x), head.tower(jnp.mean(stages[-1], axis=(1, 2))), atol=1e-5
    )


@pytest.mark.parametrize(
    "change, message",
    [
        ({"architecture": "moe"}, r"Unknown architecture 'moe'"),
        ({"architectures.mmoe.experts": 3}, r"no option\(s\) 'experts'"),
        ({"architectures.mmoe.num_experts": 0}, r"num_experts must be at least 1"),
        ({"architectures.mmoe.gate_input": "pixels"}, r"gate_input must be one of"),
        ({"architecture": "dselect_k", "architectures.dselect_k.k": 0}, r"dselect_k.k must be"),
        ({"architecture": "mtan", "trunk": "mlp"}, r"does not expose them.*stage_blocks"),
        ({"architecture": "cross_stitch", "trunk": "mlp"}, r"does not expose them"),
    ],
)
def test_bad_architecture_config_is_named(change, message):
    config = default_config()
    config.architecture = "mmoe"
    config.conv4.filters = 4
    for field, value in change.items():
        node, *path = field.split(".")
        target = config
        for key in [node, *path][:-1]:
            target = target[key]
        target[[node, *path][-1]] = value
    shape = (8, 8, 1) if config.trunk != "mlp" else (64,)
    with pytest.raises(ConfigError, match=message):
        build_model(config, toy_tasks(), shape, seed=0)


def test_gates_on_text_inputs_need_the_experts_mean():
    config = default_config()
    config.architecture = "mmoe"
    config.architectures.mmoe.gate_input = "inputs"
    with pytest.raises(ConfigError, match="gate_input=experts"):
        build_model(config, toy_tasks(), {"input_ids": (8,), "attention_mask": (8,)}, seed=0)


@pytest.fixture
def small_config(omniglot_dir, omniglot_tfds_dir):
    config = omniglot_mtl.get_config("Greek,Latin")
    config.update(dict(num_steps=6, batch_size=32, eval_batch_size=256, log_every=3))
    config.checkpoint.every = 3
    config.optimizer.schedule = "constant"  # the same schedule when a run stops at step 3
    config.model.conv4.filters = 4
    config.data.data_dir = omniglot_dir
    config.data.tfds_dir = omniglot_tfds_dir
    return config


def test_other_trainers_and_meta_learning_refuse_architectures(small_config):
    from mtl.meta import model as meta_model

    small_config.model.architecture = "mmoe"
    small_config.trainer = "sequential"
    with pytest.raises(ConfigError, match="trainer='multitask' only"):
        supervised.check_architecture(small_config)
    with pytest.raises(ConfigError, match="meta-learning adapts one trunk"):
        meta_model.build(small_config.model, "classification", 5, (8, 8, 1), seed=0)


def test_a_cgc_run_resumes_equal_to_an_uninterrupted_one(small_config, omniglot_images, tmp_path):
    small_config.model.architecture = "cgc"
    small_config.model.architectures.cgc.update(num_experts=1, task_experts=1)
    whole = supervised.train(small_config, str(tmp_path / "whole"))
    half = small_config.copy_and_resolve_references()
    half.num_steps = 3
    supervised.train(half, str(tmp_path / "parts"))
    with pytest.raises(ConfigError, match="architecture"):  # another architecture: refused
        other = small_config.copy_and_resolve_references()
        other.model.architecture = "mmoe"
        supervised.train(other, str(tmp_path / "parts"))
    resumed = supervised.train(small_config, str(tmp_path / "parts"))
    assert int(resumed.state.step) == 6
    for tree in ("params", "model_state"):
        jax.tree.map(np.testing.assert_array_equal,
                     jax.device_get(getattr(whole.state, tree)),
                     jax.device_get(getattr(resumed.state, tree)))  # fmt: skip
    recorded = json.loads((tmp_path / "parts" / "config.json").read_text())
    assert recorded["model"]["architecture"] == "cgc"


def test_hard_sharing_runs_recorded_before_architectures_still_resume(small_config, tmp_path):
    checkpoint.record_config(str(tmp_path), small_config)
    recorded = json.loads((tmp_path / "config.json").read_text())
    del recorded["model"]["architecture"], recorded["model"]["architectures"]
    (tmp_path / "config.json").write_text(json.dumps(recorded))
    checkpoint.check_config(str(tmp_path), small_config, ("model",))
    small_config.model.architecture = "mmoe"
    with pytest.raises(ConfigError, match="model"):
        checkpoint.check_config(str(tmp_path), small_config, ("model",))
