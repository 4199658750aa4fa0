"""The bert trunk: pooling, padding, option checks, and a sharded forward pass."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mtl.data import text
from mtl.errors import ConfigError
from mtl.models.trunks.bert import Bert
from tests.conftest import TINY_BERT


def batch(n=4, length=12, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, length - 3, n)  # at least 4 padded positions everywhere
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
    ids = rng.integers(1000, 30000, (n, length)).astype(np.int32) * mask
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


@pytest.fixture(scope="module")
def trunks():
    return {
        pooling: Bert((), rngs=nnx.Rngs(0), **TINY_BERT, pooling=pooling)
        for pooling in ("mean", "cls", "pooler")
    }


def test_poolings_and_parameter_paths(trunks):
    x = batch()
    hidden = trunks["mean"].encode(x)
    assert hidden.shape == (4, 12, 32)
    mask = x["attention_mask"][..., None]
    np.testing.assert_allclose(
        trunks["mean"](x), (hidden * mask).sum(1) / mask.sum(1), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(trunks["cls"](x), trunks["cls"].encode(x)[:, 0], atol=1e-6)
    assert trunks["pooler"](x).shape == (4, 32)
    assert np.abs(trunks["pooler"](x)).max() <= 1.0  # tanh
    params = nnx.to_pure_dict(nnx.state(trunks["pooler"], nnx.Param))
    assert params["layers"][1]["attention"]["query"]["kernel"].shape == (32, 32)
    assert params["layers"][0]["intermediate"]["kernel"].shape == (32, 64)
    assert params["embeddings"]["word"]["embedding"].shape == (30522, 32)
    assert "pooler" in params and "pooler" not in nnx.to_pure_dict(
        nnx.state(trunks["mean"], nnx.Param)
    )


def test_padding_changes_nothing_for_real_tokens(trunks):
    """Other ids at padded positions, or less padding (trim_padding), give the same outputs."""
    x = batch()
    noisy = dict(x, input_ids=np.where(x["attention_mask"] == 1, x["input_ids"], 7777))
    trimmed = text.trim_padding(x, 4)
    assert trimmed["input_ids"].shape[1] < 12
    for pooling, trunk in trunks.items():
        out = trunk(x)
        np.testing.assert_allclose(trunk(noisy), out, atol=1e-5, err_msg=pooling)
        np.testing.assert_allclose(trunk(trimmed), out, atol=1e-5, err_msg=pooling)


def test_dropout_only_in_training(trunks):
    trunk, x = trunks["mean"], batch()
    np.testing.assert_array_equal(trunk(x), trunk(x))
    assert not np.allclose(trunk(x, train=True), trunk(x, train=True))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(pooling="max"), "pooling must be one of mean, cls, pooler"),
        (dict(num_heads=5), "hidden_size=32 is not divisible by num_heads=5"),
        (dict(hidden_act="swish"), "hidden_act 'swish' is not supported"),
    ],
)
def test_option_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        Bert((), rngs=nnx.Rngs(0), **(TINY_BERT | options))


def test_input_errors():
    with pytest.raises(ConfigError, match="reads text"):
        Bert((28, 28, 1), rngs=nnx.Rngs(0), **TINY_BERT)
    with pytest.raises(ConfigError, match="exceed the model's 64 positions"):
        Bert({"input_ids": (65,), "attention_mask": (65,)}, rngs=nnx.Rngs(0), **TINY_BERT)


def test_sharded_batch_matches_unsharded(trunks):
    """Under the 8-device data mesh the token lookup follows the batch sharding."""
    trunk, x = trunks["mean"], batch(n=8)
    mesh = jax.make_mesh((8,), ("data",), devices=jax.devices()[:8])
    graphdef, state = nnx.split(trunk)
    forward = jax.jit(
        lambda state, x: nnx.merge(graphdef, state)(x),
        in_shardings=(NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))),
    )
    sharded = {k: jax.device_put(v, NamedSharding(mesh, P("data"))) for k, v in x.items()}
    out = forward(jax.device_put(state, NamedSharding(mesh, P())), sharded)
    assert out.sharding.spec[0] == "data"
    np.testing.assert_allclose(out, trunk({k: jnp.asarray(v) for k, v in x.items()}), atol=1e-5)
