"""The train step on the default backend (the GPU in `benchmarks/device_check.py`) equals the
same step on the CPU: the multi-task conv4 step with batch norm, and a BERT fine-tuning step.

Here both sides are CPUs, so this checks the comparison itself; on a GPU it is the check that
the accelerator computes what the CPU does. Matmuls run at full float32 precision on both sides
(`jax.default_matmul_precision("highest")`): a GPU's default float32 matmuls use TF32.
"""

import jax
import numpy as np
import optax
from jax.sharding import Mesh

from mtl.models import build_model, default_config
from mtl.runs.supervised_step import make_steps
from mtl.train import loop
from tests.conftest import TINY_BERT
from tests.helpers import sum_of_losses, toy_batch, toy_tasks


def _mesh(device) -> Mesh:
    return Mesh(np.array([device]).reshape(1, 1, 1), ("data", "fsdp", "model"))


def _steps(config, input_shape, batches, device):
    tasks = toy_tasks()
    model = build_model(config, tasks, input_shape, seed=0)
    steps = make_steps(model, tasks, optax.adam(1e-3), sum_of_losses(), seed=0)
    compiled = loop.compile_steps(steps.init, steps.train_step, _mesh(device))
    state, losses = compiled.init(), []
    for batch in batches:
        state, metrics = compiled.train_step(state, jax.device_put(batch, compiled.data_sharding))
        losses.append(jax.device_get(metrics))
    return jax.device_get(state.params), losses


def _compare(config, input_shape, batches, rtol):
    cpu = jax.devices("cpu")[0]
    with jax.default_matmul_precision("highest"):
        here = _steps(config, input_shape, batches, jax.devices()[0])
        there = _steps(config, input_shape, batches, cpu)
    for a, b in zip(here[1], there[1], strict=True):
        for key in a:
            np.testing.assert_allclose(a[key], b[key], rtol=rtol, atol=rtol, err_msg=key)
    jax.tree_util.tree_map(
        lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol), *[here[0], there[0]]
    )


def test_conv4_step_on_the_default_backend_matches_the_cpu():
    config = default_config()
    config.conv4.filters = 16
    _compare(config, (8, 8, 1), [toy_batch(32, seed=s) for s in range(3)], rtol=1e-4)


def test_bert_step_on_the_default_backend_matches_the_cpu():
    config = {"trunk": "bert", "bert": TINY_BERT | dict(dropout=0.0, attention_dropout=0.0)}
    length = 12
    shape = {k: (length,) for k in ("input_ids", "attention_mask", "token_type_ids")}
    rng = np.random.default_rng(0)
    batches = []
    for seed in range(2):
        batch = toy_batch(8, seed=seed)
        ids = rng.integers(1000, 30000, size=(8, length)).astype(np.int32)
        mask = (np.arange(length)[None] < rng.integers(4, length + 1, size=(8, 1))).astype(np.int32)
        batch["inputs"] = {
            "input_ids": ids * mask,
            "attention_mask": mask,
            "token_type_ids": np.zeros_like(ids),
        }
        batches.append(batch)
    _compare(config, shape, batches, rtol=1e-4)
