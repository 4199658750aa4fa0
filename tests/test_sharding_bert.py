"""The BERT sharding presets on 8 fake CPU devices: the big matrices are really split, and the
train step gives the losses and parameters of the replicated step."""

import functools

import jax
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from mtl import parallel, sharding
from mtl.errors import ConfigError
from mtl.models import build_model
from mtl.runs.supervised_step import make_steps
from mtl.tasks import tasks_from_config
from mtl.train import loop
from tests.conftest import TINY_BERT
from tests.helpers import sum_of_losses

LENGTH = 16
SHAPE = {k: (LENGTH,) for k in ("input_ids", "attention_mask", "token_type_ids")}
# Every large matrix of a 2-layer BERT, as paths under params/trunk.
BIG = ["embeddings/word/embedding"] + [
    f"layers/{i}/{name}/kernel"
    for i in range(2)
    for name in (
        "attention/query",
        "attention/key",
        "attention/value",
        "attention/output",
        "intermediate",
        "output",
    )
]


def _steps():
    tasks = tasks_from_config({"sst5": dict(head="classification", num_outputs=5)})
    model = build_model({"trunk": "bert", "bert": TINY_BERT}, tasks, SHAPE, seed=0)
    return make_steps(model, tasks, optax.adam(1e-3), sum_of_losses(), seed=0)


def _batch(n: int, seed: int) -> dict:
    """Random sentences of 4 to 16 tokens (the rest padding), a label each."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(4, LENGTH + 1, n)
    mask = (np.arange(LENGTH)[None] < lengths[:, None]).astype(np.int32)
    ids = rng.integers(1000, TINY_BERT["vocab_size"], (n, LENGTH)).astype(np.int32) * mask
    inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    labels = {"sst5": rng.integers(0, 5, n).astype(np.int32)}
    return {"inputs": inputs, "labels": labels, "masks": {"sst5": np.ones(n, bool)}}


def _train(mesh_config: dict, preset: str = "", num_steps: int = 3):
    """`num_steps` steps (dropout on) under a preset; the final state and the losses."""
    mesh = parallel.make_mesh(mesh_config)
    steps = _steps()
    rules = sharding.config_rules({"sharding": {"preset": preset}})
    compiled = loop.compile_steps(steps.init, steps.train_step, mesh, rules)
    state = compiled.init()
    losses = []
    for step in range(num_steps):
        batch = parallel.to_global(_batch(16, step), compiled.data_sharding)
        state, metrics = compiled.train_step(state, batch)
        losses.append(jax.device_get(metrics))
    return state, losses


@functools.cache
def _reference():
    """The replicated run on one device, shared by both presets."""
    state, losses = _train({"data": 1})
    return jax.device_get(state.params), losses


def _leaf(tree, path: str):
    for part in path.split("/"):
        tree = tree[int(part) if part.isdigit() and int(part) in tree else part]
    return tree


@pytest.mark.parametrize(
    "preset, mesh_config, axis, size",
    [("bert_fsdp", {"data": 2, "fsdp": 4}, "fsdp", 4), ("bert_megatron", {"model": 2}, "model", 2)],
)
def test_bert_preset_splits_the_big_matrices_and_keeps_the_step(preset, mesh_config, axis, size):
    assert jax.device_count() == 8, "conftest sets 8 fake CPU devices"
    ref_params, ref_losses = _reference()
    state, losses = _train(mesh_config, preset)

    trunk, mu = state.params["trunk"], state.opt_state[0].mu["trunk"]
    for path in BIG:
        for array in (_leaf(trunk, path), _leaf(mu, path)):
            assert axis in str(array.sharding.spec), path
            shard = array.addressable_shards[0].data
            # Really split: each device holds 1/size of the matrix (and of its Adam moment).
            assert shard.size * size == array.size, (path, shard.shape, array.shape)
    if preset == "bert_fsdp":
        # 30522 rows do not divide by 4, so the embedding is split over its 32 features.
        assert _leaf(trunk, BIG[0]).addressable_shards[0].data.shape == (30522, 8)
    else:
        # Megatron: q/k/v and intermediate split by columns, the output projections by rows.
        assert _leaf(trunk, "layers/0/attention/query/kernel").sharding.spec == P(None, "model")
        assert _leaf(trunk, "layers/0/output/kernel").sharding.spec == P("model", None)
    # Layer norms and the head match no rule: replicated.
    for path in ("layers/0/norm/scale", "embeddings/norm/bias"):
        assert _leaf(trunk, path).sharding.spec == P()
    assert state.params["heads"]["sst5"]["out"]["kernel"].sharding.spec == P()

    for a, b in zip(ref_losses, losses, strict=True):
        for key in a:
            np.testing.assert_allclose(a[key], b[key], atol=1e-5, err_msg=key)
    jax.tree_util.tree_map(
        lambda x, y: np.testing.assert_allclose(x, y, atol=1e-5),
        ref_params,
        jax.device_get(state.params),
    )


def test_unknown_preset_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"sharding.preset.*Did you mean 'bert_fsdp'"):
        sharding.config_rules({"sharding": {"preset": "bert_fsd"}})
    rules = sharding.config_rules({"sharding": {"preset": "bert_fsdp", "rules": (("x", None),)}})
    assert rules[0] == ("x", None) and rules[1:] == sharding.PRESETS["bert_fsdp"]
