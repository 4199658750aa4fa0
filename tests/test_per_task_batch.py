"""`batch_layout="per_task"`: one group of rows per task, batch norm per group, and every
task's gradient of the shared parameters from one backward pass."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from configs import omniglot_mtl
from mtl.data import arrays
from mtl.errors import ConfigError, DataError
from mtl.models import build_model, default_config
from mtl.runs import supervised
from mtl.runs import task_affinity as affinity
from mtl.runs.supervised_step import make_steps
from mtl.tasks import tasks_from_config
from mtl.weighting import base, get_weighting
from tests.conftest import TINY_BERT
from tests.test_weighting import assert_tree_close

NUM_TASKS, PER_TASK = 3, 4


def grouped_problem(conv: str = "matmul", filters: int = 8):
    """A conv4 model with three classification tasks and a batch of three groups of four."""
    tasks = tasks_from_config(
        {f"t{t}": dict(head="classification", num_outputs=5) for t in range(NUM_TASKS)}
    )
    config = default_config()
    config.conv4.filters = filters
    config.conv4.conv = conv
    model = build_model(config, tasks, (12, 12, 1), seed=0)
    rng = np.random.default_rng(0)
    n = NUM_TASKS * PER_TASK
    owner = np.arange(n) // PER_TASK
    batch = {
        "inputs": rng.normal(size=(n, 12, 12, 1)).astype(np.float32),
        "labels": {
            f"t{t}": np.where(owner == t, rng.integers(0, 5, n), -1).astype(np.int32)
            for t in range(NUM_TASKS)
        },
        "masks": {f"t{t}": owner == t for t in range(NUM_TASKS)},
    }
    return model, tasks, batch


def objective_of(steps, batch):
    state = steps.init()
    return steps.objective(state.params, state.model_state, batch, train=True), state


@pytest.mark.parametrize("conv", ["matmul", "xla"])
def test_per_task_gradients_match_one_grad_per_task(conv):
    model, tasks, batch = grouped_problem(conv)
    steps = make_steps(model, tasks, optax.sgd(0.1), get_weighting("equal"), 0, per_task_batch=True)
    obj, _ = objective_of(steps, batch)
    grads, task_grads, update = base.per_task_shared_grads(obj)

    def loss_t(shared, t):
        return base.forward(obj._replace(shared=shared))[0][t]

    for t in range(NUM_TASKS):
        expected = jax.grad(loss_t)(obj.shared, t)
        got = jax.tree.map(lambda g, t=t: g[t], grads)
        assert_tree_close(got, expected, 1e-4, 1e-6)
    np.testing.assert_allclose(update.losses, base.forward(obj)[0], rtol=1e-6)

    def total(shared, heads):
        return jnp.sum(base.forward(obj._replace(shared=shared, task_specific=heads))[0])

    summed = jax.grad(total, argnums=(0, 1))(obj.shared, obj.task_specific)
    assert_tree_close((update.shared_grads, task_grads), summed, 1e-4, 1e-6)


def test_batch_norm_statistics_are_taken_per_group():
    model, tasks, batch = grouped_problem()
    equal = get_weighting("equal")
    grouped = make_steps(model, tasks, optax.sgd(0.1), equal, 0, per_task_batch=True)
    mixed = make_steps(model, tasks, optax.sgd(0.1), equal, 0)
    state = grouped.init()
    params, model_state = state.params, state.model_state
    z, stats = grouped.objective(params, model_state, batch, True).representation(params["trunk"])
    for t, x in enumerate(np.split(batch["inputs"], NUM_TASKS)):
        # each group alone through the plain trunk: the same features
        alone = mixed.objective(params, model_state, {"inputs": x}, True)
        rows = slice(t * PER_TASK, (t + 1) * PER_TASK)
        np.testing.assert_allclose(z[rows], alone.representation(params["trunk"])[0], 1e-5, 1e-5)
    whole = mixed.objective(params, model_state, batch, True)
    z_mixed, mixed_stats = whole.representation(params["trunk"])
    assert not np.allclose(z, z_mixed, atol=1e-3)  # not the whole batch's statistics
    # The running statistics move by the mean of the groups' batch statistics.
    per_group = [
        mixed.objective(params, model_state, {"inputs": x}, True).representation(params["trunk"])[1]
        for x in np.split(batch["inputs"], NUM_TASKS)
    ]
    expected = jax.tree.map(lambda *s: np.mean(np.stack(s), axis=0), *per_group)
    assert_tree_close(stats, expected, 1e-5, 1e-6)
    # Evaluation does not group: running statistics, any batch size.
    evaluation = grouped.objective(params, model_state, batch, train=False)
    assert evaluation.per_task_representation is None


@pytest.mark.parametrize("method", ["pcgrad", "equal"])
def test_eight_devices_match_one_device(method):
    model, tasks, batch = grouped_problem()
    batch = jax.tree.map(lambda a: np.concatenate([a, a[::-1]]) if a.ndim else a, batch)
    # 24 rows: regroup so that each task's 8 rows are contiguous again
    owner = np.argmax(np.stack([batch["masks"][f"t{t}"] for t in range(NUM_TASKS)], 1), 1)
    batch = jax.tree.map(lambda a: a[np.argsort(owner, kind="stable")], batch)
    steps = make_steps(model, tasks, optax.adam(1e-2), get_weighting(method), 0,
                       per_task_batch=True)  # fmt: skip
    step = jax.jit(steps.train_step)
    state = steps.init()
    single_state, single = step(jax.device_put(state, jax.devices()[0]), batch)
    mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
    sharded_batch = jax.device_put(batch, NamedSharding(mesh, PartitionSpec("data")))
    assert len(sharded_batch["inputs"].addressable_shards) == 8
    state = jax.device_put(steps.init(), NamedSharding(mesh, PartitionSpec()))
    sharded_state, sharded = step(state, sharded_batch)
    assert_tree_close((sharded_state.params, sharded), (single_state.params, single),
                      1e-4, 1e-5)  # fmt: skip


# --- the sampler -------------------------------------------------------------------------------


def owned_data(owners: np.ndarray, num_tasks: int) -> dict:
    n = len(owners)
    return {
        "inputs": np.arange(n, dtype=np.float32)[:, None],
        "labels": {f"t{t}": np.zeros(n, np.int32) for t in range(num_tasks)},
        "masks": {f"t{t}": owners == t for t in range(num_tasks)},
    }


def test_per_task_batches_are_groups_of_each_task_and_cover_its_epoch():
    owners = np.array([0, 1, 2, 0, 0, 1, 2, 2, 2, 0, 1, 0] * 3)
    found = arrays.task_owners(owned_data(owners, 3), ["t0", "t1", "t2"])
    np.testing.assert_array_equal(found, owners)
    seen = {t: [] for t in range(3)}
    for step in range(3):  # task 1 has 9 examples: 3 steps of 3 are one epoch
        index = arrays.per_task_batch_indices(7, step, owners, 3, 9)
        np.testing.assert_array_equal(owners[index], np.repeat([0, 1, 2], 3))
        for t in range(3):
            seen[t].extend(index[3 * t : 3 * t + 3])
        again = arrays.per_task_batch_indices(7, step, owners, 3, 9)
        np.testing.assert_array_equal(index, again)  # depends on (seed, step) only
    assert sorted(seen[1]) == sorted(np.flatnonzero(owners == 1))
    assert len(set(seen[0])) == 9  # no repeats within task 0's 15-example epoch


def test_examples_without_exactly_one_task_are_refused():
    owners = np.array([0, 1, 0, 1])
    data = owned_data(owners, 2)
    data["masks"]["t1"] = np.array([True, True, False, True])  # example 0: both tasks
    with pytest.raises(DataError, match=r"exactly one task.*1 examples.*example 0.*t0', 't1"):
        arrays.task_owners(data, ["t0", "t1"])
    data["masks"]["t0"] = np.array([False, False, False, False])  # example 2: no task
    with pytest.raises(DataError, match=r"no task's label.*example 2"):
        arrays.task_owners(data, ["t0", "t1"])
    data = owned_data(np.array([0, 0, 0]), 2)
    with pytest.raises(DataError, match="no examples for t1"):
        arrays.task_owners(data, ["t0", "t1"])


# --- the trainer -------------------------------------------------------------------------------


@pytest.fixture
def config(omniglot_dir, omniglot_tfds_dir):
    config = omniglot_mtl.get_config("Greek,Latin,Korean")
    config.update(dict(num_steps=60, batch_size=48, eval_batch_size=256, log_every=10))
    config.optimizer.learning_rate = 3e-3
    config.model.conv4.filters = 8
    config.model.conv4.conv = "matmul"
    config.data.data_dir = omniglot_dir
    config.data.tfds_dir = omniglot_tfds_dir
    config.batch_layout = "per_task"
    return config


def test_bad_layouts_are_refused_before_building(config, tmp_path, monkeypatch):
    monkeypatch.setattr(supervised, "build_model", lambda *a, **k: pytest.fail("built"))
    config.batch_layout = "per-task"
    with pytest.raises(ConfigError, match=r"batch layout 'per-task'.*Did you mean 'per_task'"):
        supervised.train(config, str(tmp_path))
    config.batch_layout = "per_task"
    config.batch_size = 25
    with pytest.raises(ConfigError, match=r"batch_size=25 is not a multiple of the 3 tasks"):
        supervised.train(config, str(tmp_path))


def test_other_trainers_refuse_the_per_task_layout(config, tmp_path):
    config.trainer = "affinity"
    config.affinity = affinity.default_config()
    with pytest.raises(ConfigError, match="trainer='multitask' only, not 'affinity'"):
        affinity.train(config, str(tmp_path))
    assert not list(tmp_path.glob("**/checkpoints/*"))


def test_pcgrad_run_with_per_task_batches_lowers_the_loss(config, tmp_path, omniglot_images):
    config.weighting.name = "pcgrad"
    results = supervised.train(config, str(tmp_path))["test"]
    assert set(results) == {"Greek", "Latin", "Korean"}
    records = [
        line
        for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
        if "train/loss" in line
    ]
    losses = [
        np.mean([v for k, v in json.loads(r).items() if k.startswith("train/loss/")])
        for r in records
    ]
    assert np.mean(losses[-2:]) < 0.97 * np.mean(losses[:2])


def test_dropout_draws_a_different_mask_per_group():
    """Groups run in one `vmap`; each must get its own dropout stream, not one repeated."""
    tasks = tasks_from_config(
        {f"t{t}": dict(head="classification", num_outputs=2) for t in range(NUM_TASKS)}
    )
    length = 16
    shape = {k: (length,) for k in ("input_ids", "attention_mask", "token_type_ids")}
    options = TINY_BERT | dict(dropout=0.5, attention_dropout=0.5)
    model = build_model({"trunk": "bert", "bert": options}, tasks, shape, seed=0)
    n = NUM_TASKS * PER_TASK
    owner = np.arange(n) // PER_TASK
    ids = np.tile(np.random.default_rng(0).integers(1000, 30000, (1, length)), (n, 1))
    batch = {
        "inputs": {
            "input_ids": ids.astype(np.int32),
            "attention_mask": np.ones((n, length), np.int32),
            "token_type_ids": np.zeros((n, length), np.int32),
        },
        "labels": {f"t{t}": np.where(owner == t, 1, -1).astype(np.int32) for t in range(3)},
        "masks": {f"t{t}": owner == t for t in range(NUM_TASKS)},
    }
    steps = make_steps(model, tasks, optax.sgd(0.1), get_weighting("equal"), 0, per_task_batch=True)
    obj, state = objective_of(steps, batch)
    z, new_state = obj.representation(obj.shared)
    groups = np.asarray(z).reshape(NUM_TASKS, PER_TASK, -1)
    # The same sentence at the same place in each group: only the dropout masks differ.
    for g in range(1, NUM_TASKS):
        assert np.abs(groups[g] - groups[0]).max() > 1e-2
    # Keys stay as they were; counters advance as in one ungrouped pass.
    ungrouped = make_steps(model, tasks, optax.sgd(0.1), get_weighting("equal"), 0)
    _, expected_state = objective_of(ungrouped, batch)[0].representation(obj.shared)
    flat = jax.tree_util.tree_leaves_with_path(new_state)
    before = dict(jax.tree_util.tree_leaves_with_path(state.model_state["trunk"]))
    after_ungrouped = dict(jax.tree_util.tree_leaves_with_path(expected_state))
    for path, leaf in flat:
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            assert bool(jnp.all(jax.random.key_data(leaf) == jax.random.key_data(before[path])))
        else:
            np.testing.assert_array_equal(leaf, after_ungrouped[path])
