"""`config.precision = "bfloat16"`: trunks compute in bfloat16, parameters, optimizer state,
checkpoints, heads and losses stay float32, and every trunk still learns."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mtl.errors import ConfigError
from mtl.models import build_model, precision
from mtl.tasks import tasks_from_config
from tests.conftest import TINY_BERT


def _images(shape) -> tuple[jax.Array, jax.Array]:
    rng = np.random.default_rng(0)
    x = rng.random((16, *shape)).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(rng.integers(0, 3, 16).astype(np.int32))


def _text() -> tuple[dict, jax.Array]:
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 2000, (16, 12)).astype(np.int32)
    mask = (np.arange(12)[None] < rng.integers(4, 13, 16)[:, None]).astype(np.int32)
    inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    return {k: jnp.asarray(v) for k, v in inputs.items()}, jnp.asarray(ids[:, 0] % 3)


CASES = {
    "mlp": (dict(hidden=(32,), batch_norm=True), lambda: _images((6, 6, 1))),
    "conv4": (dict(filters=8, conv="matmul"), lambda: _images((16, 16, 1))),
    "conv4_xla": (dict(filters=8, conv="xla"), lambda: _images((16, 16, 1))),
    "bert": (dict(TINY_BERT, dropout=0.0, attention_dropout=0.0), _text),
}


def _model(trunk: str, options: dict, shape, dtype: str):
    name = trunk.split("_")[0]
    tasks = tasks_from_config({"t": dict(head="classification", num_outputs=3)})
    config = {"trunk": name, name: options}
    return build_model(config, tasks, shape, seed=0, precision=dtype)


@pytest.mark.parametrize("trunk", sorted(CASES))
def test_every_trunk_learns_in_bfloat16_with_float32_parameters(trunk):
    options, batch = CASES[trunk]
    x, y = batch()
    shape = {k: v.shape[1:] for k, v in x.items()} if isinstance(x, dict) else x.shape[1:]
    model = _model(trunk, options, shape, "bfloat16")
    # The trunk computes in bfloat16; the heads read float32.
    assert model.trunk(x, train=False).dtype == jnp.bfloat16
    assert model(x)["t"].dtype == jnp.float32
    params = nnx.state(model, nnx.Param)
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}

    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer):
        def loss_fn(model):
            logits = model(x, train=True)["t"]
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(step(model, optimizer)) for _ in range(12)]
    assert losses[-1] < 0.7 * losses[0], losses
    params = nnx.state(model, nnx.Param)
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    moments = nnx.state(optimizer, nnx.OptState)
    floating = [v for v in jax.tree.leaves(moments) if jnp.issubdtype(v.dtype, jnp.floating)]
    assert {leaf.dtype for leaf in floating} == {jnp.dtype(jnp.float32)}


@pytest.mark.parametrize("trunk", ["conv4", "bert"])
def test_bfloat16_outputs_stay_near_float32(trunk):
    """The same parameters in both precisions: bfloat16's 8 mantissa bits, not a different
    computation (a float32 softmax and float32 norm statistics keep the error small)."""
    options, batch = CASES[trunk]
    x, _ = batch()
    shape = {k: v.shape[1:] for k, v in x.items()} if isinstance(x, dict) else x.shape[1:]
    full = _model(trunk, options, shape, "float32")
    half = _model(trunk, options, shape, "bfloat16")
    a = np.asarray(full.trunk(x, train=False))
    b = np.asarray(half.trunk(x, train=False).astype(jnp.float32))
    assert np.abs(a - b).max() < 0.05 * np.abs(a).max() + 0.02


def test_unknown_precision_is_one_clear_error():
    with pytest.raises(ConfigError, match="precision must be one of float32, bfloat16"):
        precision.of({"precision": "float16"})
    assert precision.of({}) == "float32"


def test_a_bfloat16_run_checkpoints_float32(tmp_path):
    from mtl import checkpoint
    from mtl.data.sources import MultiTaskData
    from mtl.runs import supervised
    from mtl.train.loop import run
    from tests.test_transfer import toy_supervised_config

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int32)
    data = {"inputs": x, "labels": {"t": y}, "masks": {"t": np.ones(200, bool)}}
    config = toy_supervised_config(num_steps=60)
    config.precision = "bfloat16"
    result = run(supervised.experiment(supervised.parts(config, MultiTaskData(data, data))),
                 str(tmp_path))  # fmt: skip
    assert result["test"]["t"]["accuracy"] > 0.9
    saved = checkpoint.final_state(str(tmp_path))["params"]
    assert {np.asarray(v).dtype for v in jax.tree.leaves(saved)} == {np.dtype(np.float32)}
