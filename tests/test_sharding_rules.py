"""Sharding rules on 8 fake CPU devices: big matrices are really split; the step is unchanged."""

import jax
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from mtl import parallel, sharding
from mtl.errors import ConfigError
from mtl.models import build_model, default_config
from mtl.runs.supervised_step import make_steps
from mtl.train import loop
from tests.helpers import sum_of_losses, toy_batch, toy_tasks


def _steps(trunk: str, optimizer=None):
    config = default_config()
    config.trunk = trunk
    config.conv4.filters = 16
    config.mlp.hidden = (64, 128)
    tasks = toy_tasks()
    model = build_model(config, tasks, (8, 8, 1), seed=0)
    # SGD: Adam would turn the rounding noise in gradients that are 0 in exact arithmetic (conv4's
    # conv biases before batch norm) into full-size steps of either sign on each mesh.
    return make_steps(model, tasks, optimizer or optax.sgd(0.1), sum_of_losses(), seed=0)


def _train(trunk: str, mesh_config: dict, rules=(), num_steps: int = 3):
    """`num_steps` steps under `rules`; returns the final state (on devices) and the metrics."""
    mesh = parallel.make_mesh(mesh_config)
    steps = _steps(trunk)
    compiled = loop.compile_steps(steps.init, steps.train_step, mesh, rules)
    state = compiled.init()
    history = []
    for step in range(num_steps):
        batch = parallel.to_global(toy_batch(32, seed=step), compiled.data_sharding)
        state, metrics = compiled.train_step(state, batch)
        history.append(jax.device_get(metrics))
    return state, history


def _assert_same(a, b):
    jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-5), a, b)


@pytest.mark.parametrize(
    "trunk, mesh_config, rules, path, spec, shard_shape",
    [
        # fsdp: the largest dimension that 4 divides; the batch is split over data x fsdp.
        (
            "mlp",
            {"data": 2, "fsdp": 4},
            (("trunk/.*kernel", "fsdp"),),
            "layers/1",
            "fsdp",
            (64, 32),
        ),
        # model: an explicit per-dimension spec (Megatron-style column split).
        (
            "mlp",
            {"data": 2, "model": 4},
            (("trunk/layers/.*/kernel", (None, "model")),),
            "layers/1",
            (None, "model"),
            (64, 32),
        ),
        # conv4 HWIO kernels: 16 output channels over 4 fsdp devices.
        ("conv4", {"data": 2, "fsdp": 4}, (("trunk/.*kernel", "fsdp"),), "blocks/1", "fsdp", None),
    ],
)
def test_rules_split_the_trunk_and_keep_the_step(
    trunk, mesh_config, rules, path, spec, shard_shape
):
    assert jax.device_count() == 8, "conftest sets 8 fake CPU devices"
    reference, ref_history = _train(trunk, {"data": 1}, ())
    state, history = _train(trunk, mesh_config, rules)

    layer = state.params["trunk"]
    for part in path.split("/"):
        layer = layer[int(part) if part.isdigit() else part]
    kernel = layer["kernel"] if "kernel" in layer else layer["conv"]["kernel"]
    shards = kernel.addressable_shards
    assert "fsdp" in str(kernel.sharding.spec) or "model" in str(kernel.sharding.spec)
    # Really split: each device holds a quarter of the matrix, and so of its Adam moments.
    assert shards[0].data.size * 4 == kernel.size
    if shard_shape is not None:
        assert shards[0].data.shape == shard_shape
    # Biases and heads match no rule: replicated.
    head = state.params["heads"]["a"]["out"]["kernel"]
    assert head.sharding.spec == P() and head.addressable_shards[0].data.size == head.size

    for a, b in zip(ref_history, history, strict=True):
        for key in a:
            assert np.isfinite(a[key]), key
            np.testing.assert_allclose(a[key], b[key], atol=1e-5, err_msg=key)
    _assert_same(jax.device_get(reference.params), jax.device_get(state.params))
    _assert_same(jax.device_get(reference.opt_state), jax.device_get(state.opt_state))


def test_optimizer_moments_follow_their_parameters():
    mesh = parallel.make_mesh({"data": 2, "fsdp": 4})
    shapes = jax.eval_shape(_steps("mlp", optax.adam(1e-2)).init)
    shardings = sharding.tree_shardings(shapes, (("trunk/.*kernel", "fsdp"),), mesh)
    param = shardings.params["trunk"]["layers"][1]["kernel"]
    moment = shardings.opt_state[0].mu["trunk"]["layers"][1]["kernel"]
    assert param.spec == moment.spec == P(None, "fsdp")
    assert shardings.step.spec == P()


def test_summary_names_the_split_arrays():
    mesh = parallel.make_mesh({"data": 2, "fsdp": 4})
    shapes = jax.eval_shape(_steps("mlp").init)
    text = sharding.summary(shapes, sharding.tree_shardings(shapes, (("kernel", "fsdp"),), mesh))
    assert "params/trunk/layers/1/kernel (64, 128) -> P(None, 'fsdp')" in text
    assert "parameter arrays split" in text


@pytest.mark.parametrize(
    "rules, message",
    [
        ((("kernel", "tensor"),), r"names mesh axis 'tensor'; the mesh has data, fsdp, model"),
        (
            (("layers/0/kernel", (None, None, "model")),),
            r"3 entries but .*trunk/layers/0/kernel",
        ),
        ((("heads/b/out/kernel", (None, "model")),), r"over 8 devices, which does not divide 3"),
        (("kernel",), r"must be \(regex, spec\)"),
        ((("kernel[", "fsdp"),), r"bad regex"),
    ],
)
def test_bad_rules_are_config_errors(rules, message):
    mesh = parallel.make_mesh({"data": 1, "model": 8})
    shapes = jax.eval_shape(_steps("mlp").init)
    with pytest.raises(ConfigError, match=message):
        sharding.tree_shardings(shapes, rules, mesh)


def test_mesh_axes_must_fit_the_devices():
    with pytest.raises(ConfigError, match="does not divide the 8 available devices"):
        parallel.make_mesh({"fsdp": 3})
    with pytest.raises(ConfigError, match=r"Unknown mesh axis 'fdsp'.*'fsdp'"):
        parallel.make_mesh({"fdsp": 2})
    assert dict(parallel.make_mesh({"fsdp": 2, "model": 2}).shape) == {
        "data": 2,
        "fsdp": 2,
        "model": 2,
    }


def test_process_rows_follow_the_sharding():
    mesh = parallel.make_mesh({"data": 2, "model": 4})
    # One process holds every device here, so it holds every row.
    assert parallel.process_rows(32, parallel.batch_sharding(mesh)) == slice(0, 32)


def test_loop_trains_sharded_and_resumes_under_another_mesh(
    tmp_path, omniglot_images, omniglot_dir, omniglot_tfds_dir, caplog
):
    from configs import omniglot_mtl
    from mtl import checkpoint
    from mtl.runs import supervised

    config = omniglot_mtl.get_config("Greek,Latin")
    config.update(dict(num_steps=2, batch_size=32, eval_batch_size=256, log_every=1))
    config.model.conv4.filters = 8
    config.data.data_dir, config.data.tfds_dir = omniglot_dir, omniglot_tfds_dir
    config.mesh.update(dict(data=2, fsdp=4))
    config.sharding.rules = (("trunk/.*kernel", "fsdp"),)
    with caplog.at_level("INFO"):
        supervised.train(config, str(tmp_path))
    assert "Sharding: 4 parameter arrays split" in caplog.text
    saved = checkpoint.read_on_host(str(tmp_path / "checkpoints"))
    assert saved["params"]["trunk"]["blocks"]["1"]["conv"]["kernel"].shape == (3, 3, 8, 8)

    # Sharding is not part of the model: the same run goes on replicated on 8 devices.
    config.num_steps = 3
    config.mesh.update(dict(data=-1, fsdp=1))
    config.sharding.rules = ()
    caplog.clear()
    with caplog.at_level("INFO"):
        supervised.train(config, str(tmp_path))
    assert "at step 2." in caplog.text
    assert checkpoint.read_on_host(str(tmp_path / "checkpoints"))["step"] == 3


def test_trunk_modules_add_their_presets():
    from mtl import sharding
    from mtl.models.trunks import decoder

    config = {"sharding": {"preset": "decoder_megatron", "rules": ()}}
    assert sharding.config_rules(config) == tuple(decoder.SHARDING_PRESETS["decoder_megatron"])
    assert {"bert_fsdp", "decoder_fsdp", "decoder_megatron"} <= set(sharding.presets())
