"""The multi-task train step over an 8-device mesh equals the single-device step."""

import jax
import numpy as np
import optax
import pytest
from jax.sharding import Mesh

from mtl import parallel
from mtl.models import build_model, default_config
from mtl.runs.supervised_step import make_steps
from mtl.train import loop
from tests.helpers import sum_of_losses, toy_batch, toy_tasks


def _run(mesh: Mesh, num_steps: int = 3):
    config = default_config()
    config.conv4.filters = 8
    tasks = toy_tasks()
    model = build_model(config, tasks, (8, 8, 1), seed=0)
    # SGD: Adam would turn the rounding noise in gradients that are 0 in exact arithmetic (the
    # conv biases before batch norm) into full-size steps of either sign on each mesh.
    steps = make_steps(model, tasks, optax.sgd(0.1), sum_of_losses(), seed=0)
    compiled = loop.compile_steps(steps.init, steps.train_step, mesh, rules=())
    state = compiled.init()
    history = []
    for step in range(num_steps):
        batch = parallel.to_global(toy_batch(32, seed=step), compiled.data_sharding)
        state, metrics = compiled.train_step(state, batch)
        history.append(jax.device_get(metrics))
    return jax.device_get(state), history, batch


def test_eight_devices_match_one_device():
    assert jax.device_count() == 8, "conftest sets 8 fake CPU devices"
    one, one_hist, _ = _run(parallel.make_mesh({"data": 1}))
    eight, eight_hist, batch = _run(parallel.make_mesh({"data": 8}))
    # The batch really is split: each device holds 4 of the 32 examples.
    assert len(batch["inputs"].addressable_shards) == 8
    assert batch["inputs"].addressable_shards[0].data.shape[0] == 4
    for a, b in zip(one_hist, eight_hist, strict=True):
        for key in a:
            assert np.isfinite(a[key]), key
            np.testing.assert_allclose(a[key], b[key], atol=1e-5, err_msg=key)
    jax.tree_util.tree_map(
        lambda x, y: np.testing.assert_allclose(x, y, atol=1e-5),
        one.params,
        eight.params,
    )
    jax.tree_util.tree_map(
        lambda x, y: np.testing.assert_allclose(x, y, atol=1e-5),
        one.model_state,
        eight.model_state,
    )


def test_batch_size_must_split_over_devices():
    from mtl.errors import ConfigError

    with pytest.raises(ConfigError, match="divisible by the 8 data-parallel devices"):
        parallel.check_batch_size(12, parallel.make_mesh({"data": 8}))
