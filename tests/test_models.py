"""Trunks, heads and the multi-task model: shapes, registry errors, functional apply."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl.errors import ConfigError
from mtl.models import TRUNKS, build_model, default_config
from mtl.models.functional import PureModule
from tests.helpers import toy_tasks


def test_every_trunk_file_is_registered():
    assert {"mlp", "conv4"} <= set(TRUNKS)


@pytest.mark.parametrize(
    "downsample, pooling, expected",
    [("stride", "mean", 64), ("stride", "flatten", 64 * 2 * 2), ("maxpool", "flatten", 64)],
)
def test_conv4_output_width_matches_maml(downsample, pooling, expected):
    # 28x28 -> 14 -> 7 -> 4 -> 2 with stride-2 SAME convs; 28 -> 14 -> 7 -> 3 -> 1 with VALID pools.
    config = default_config()
    config.conv4.downsample, config.conv4.pooling = downsample, pooling
    model = build_model(config, toy_tasks(), (28, 28, 1), seed=0)
    out = model(jnp.zeros((2, 28, 28, 1)), train=True)
    assert model.trunk.out_features == expected
    assert {k: v.shape for k, v in out.items()} == {"a": (2, 4), "b": (2, 3), "r": (2, 1)}


def test_conv4_has_maml_layout():
    model = build_model(default_config(), toy_tasks(), (28, 28, 1), seed=0)
    _, params, state = PureModule.split(model.trunk)
    kernels = [params["blocks"][i]["conv"]["kernel"].shape for i in range(4)]
    assert kernels == [(3, 3, 1, 64)] + [(3, 3, 64, 64)] * 3
    assert set(state["blocks"][0]["norm"]) == {"mean", "var"}


def test_unknown_trunk_suggests_closest_name():
    config = default_config()
    config.trunk = "conv5"
    with pytest.raises(ConfigError, match=r"Unknown trunk 'conv5'.*Did you mean 'conv4'"):
        build_model(config, toy_tasks(), (28, 28, 1), seed=0)


def test_unknown_trunk_option_is_named():
    config = default_config()
    config.conv4.filter = 32  # typo of `filters`
    with pytest.raises(ConfigError, match=r"no option\(s\) 'filter'.*filters"):
        build_model(config, toy_tasks(), (28, 28, 1), seed=0)


def test_pure_apply_matches_eager_module_and_updates_batch_stats():
    config = default_config()
    config.conv4.filters = 8
    model = build_model(config, toy_tasks(), (28, 28, 1), seed=0)
    pure, params, state = PureModule.split(model.trunk)
    x = jax.random.normal(jax.random.key(1), (4, 28, 28, 1))
    out, new_state = jax.jit(lambda p, s, x: pure.apply(p, s, x, train=True))(params, state, x)
    np.testing.assert_allclose(out, model.trunk(x, train=True), atol=1e-5)
    assert not np.allclose(new_state["blocks"][0]["norm"]["mean"], 0.0)
    # Eval mode uses the running statistics and leaves them alone.
    _, same_state = pure.apply(params, state, x, train=False)
    np.testing.assert_array_equal(same_state["blocks"][0]["norm"]["mean"], 0.0)


def test_mlp_trunk_flattens_images():
    config = default_config()
    config.trunk = "mlp"
    config.mlp.hidden = (40, 40)
    model = build_model(config, toy_tasks(), (8, 8, 1), seed=0)
    assert model(jnp.zeros((3, 8, 8, 1)))["a"].shape == (3, 4)
