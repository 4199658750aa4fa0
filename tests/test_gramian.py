"""The Gram-matrix route of the per-task-gradient methods (`wrt="shared_gramian"`): its Gram
matrix against the Gram of the exact per-task gradients, every method's update against its
exact route, whole train steps on conv4 with batch norm and on bert, and the memory it saves."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest

from mtl.models import build_model, default_config
from mtl.runs.supervised_step import make_steps
from mtl.tasks import tasks_from_config
from mtl.weighting import base, get_weighting, gradients
from tests.test_weighting import RNG, assert_tree_close, make_objective, make_problem

METHODS = ("pcgrad", "mgda", "cagrad", "nash_mtl", "aligned_mtl", "upgrad", "imtl_g", "fairgrad")
NUM_TASKS = 4
TEXT_SHAPE = {"input_ids": (6,), "attention_mask": (6,)}


def _tasks():
    return tasks_from_config(
        {f"t{t}": dict(head="classification", num_outputs=3) for t in range(NUM_TASKS)}
    )


def _model(trunk: str, hidden: int = 16, vocab: int = 50, layers: int = 2):
    config = default_config()
    config.trunk = trunk
    config.conv4.filters = 4
    config.bert.update(vocab_size=vocab, hidden_size=hidden, num_layers=layers, num_heads=2,
                       intermediate_size=2 * hidden, max_position_embeddings=16, dropout=0.0,
                       attention_dropout=0.0)  # fmt: skip
    shape = TEXT_SHAPE if trunk == "bert" else (8, 8, 1)
    return build_model(config, _tasks(), shape, seed=0)


def _batch(trunk: str, n: int, seed: int = 0, vocab: int = 50) -> dict:
    """Every row labelled for one task (the `mixed` layout's common case: batch norm couples
    the rows, so every task's gradient reaches every row)."""
    rng = np.random.default_rng(seed)
    owner = np.arange(n) % NUM_TASKS
    labels = {
        f"t{t}": np.where(owner == t, rng.integers(0, 3, n), -1).astype(np.int32)
        for t in range(NUM_TASKS)
    }
    masks = {f"t{t}": owner == t for t in range(NUM_TASKS)}
    if trunk == "bert":
        ids = rng.integers(1, vocab, (n, 6)).astype(np.int32)
        inputs = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    else:
        inputs = rng.normal(size=(n, 8, 8, 1)).astype(np.float32)
    return {"inputs": inputs, "labels": labels, "masks": masks}


def _steps(trunk: str, method: str, wrt: str, **model_sizes):
    weighting = get_weighting(method, {"wrt": wrt})
    return make_steps(_model(trunk, **model_sizes), _tasks(), optax.sgd(0.1), weighting, seed=0)


@pytest.mark.parametrize("trunk", ["conv4", "bert"])
def test_gramian_equals_the_gram_of_the_exact_gradients(trunk):
    steps = _steps(trunk, "pcgrad", "shared")
    state = steps.init()
    batch = jax.device_put(_batch(trunk, 16))

    @jax.jit
    def both(params):
        objective = steps.objective(params, state.model_state, batch, True)
        exact = gradients.gram(base.per_task_shared_grads(objective)[0])
        return exact, gradients.shared_gramian(gradients.split_at_representation(objective))

    exact, layerwise = jax.device_get(both(state.params))
    scale = np.max(np.abs(exact))
    assert scale > 0 and np.all(np.isfinite(layerwise))
    # The tasks' gradients are neither equal nor orthogonal: the test can tell them apart.
    assert np.min(np.abs(exact[~np.eye(NUM_TASKS, dtype=bool)])) > 1e-3 * scale
    np.testing.assert_allclose(layerwise / scale, exact / scale, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", METHODS)
def test_every_method_gives_the_update_of_its_exact_route(name):
    params, data = make_problem()
    updates = {}
    for wrt in ("shared", "shared_gramian"):
        method = get_weighting(name, {"wrt": wrt})
        update, _ = jax.jit(lambda p, m=method: m.update(make_objective(p, data), m.init(3), RNG))(
            params
        )
        updates[wrt] = update
    exact, layerwise = updates["shared"], updates["shared_gramian"]
    assert_tree_close(layerwise.weights, exact.weights, 1e-5, 1e-6)
    assert_tree_close(layerwise.shared_grads, exact.shared_grads, 1e-5, 1e-6)
    assert_tree_close(layerwise.task_grads, exact.task_grads, 1e-5, 1e-6)
    np.testing.assert_allclose(layerwise.losses, exact.losses, 1e-6)


@pytest.mark.parametrize("trunk", ["conv4", "bert"])
def test_train_steps_match_the_exact_route(trunk):
    """Three PCGrad (shuffled) steps: parameters, batch-norm statistics and metrics."""
    results = {}
    for wrt in ("shared", "shared_gramian"):
        steps = _steps(trunk, "pcgrad", wrt)
        train_step = jax.jit(steps.train_step)
        state = steps.init()
        for step in range(3):
            state, metrics = train_step(state, jax.device_put(_batch(trunk, 16, seed=step)))
        # Key leaves (bert's dropout streams) as their integers, to compare them too.
        keys_as_data = lambda a: (
            jax.random.key_data(a) if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key) else a
        )
        results[wrt] = jax.device_get(
            jax.tree.map(keys_as_data, (state.params, state.model_state, metrics))
        )
    params, model_state, metrics = results["shared_gramian"]
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(params))
    assert_tree_close(params, results["shared"][0], 1e-5, 1e-5)
    assert_tree_close(model_state, results["shared"][1], 1e-5, 1e-5)
    assert_tree_close(metrics, results["shared"][2], 1e-5, 1e-5)


def _temp_bytes(wrt: str) -> tuple[int, int]:
    """`(temporary bytes of the compiled train step, shared parameter count)` on a bert trunk
    whose parameters outweigh its activations (wide, short sentences, small batch) and whose
    layers outweigh its embeddings (the route holds the T gradients of a leaf or two at a
    time, so a vocabulary table larger than the layers would set its peak)."""
    steps = _steps("bert", "pcgrad", wrt, hidden=128, vocab=100, layers=4)
    state = jax.eval_shape(steps.init)
    batch = jax.eval_shape(lambda: _batch("bert", 4, vocab=100))
    compiled = jax.jit(steps.train_step).lower(state, batch).compile()
    shared = sum(leaf.size for leaf in jax.tree.leaves(state.params["trunk"]))
    return compiled.memory_analysis().temp_size_in_bytes, shared


def test_the_jacobian_of_the_shared_parameters_never_exists():
    exact, shared = _temp_bytes("shared")
    layerwise, _ = _temp_bytes("shared_gramian")
    jacobian = NUM_TASKS * shared * 4  # [T, P] float32
    assert exact >= jacobian  # the exact route holds it (so this test can fail)
    # Measured on 2026-12-07 (jax 0.10, CPU): exact 8.9 MB, this route 1.8 MB, Jacobian 8.7 MB.
    assert layerwise < 0.3 * jacobian, (layerwise, jacobian)
