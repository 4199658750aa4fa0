"""Vision trunks (resnet, resnet12, vit): parity with torchvision / timm through the converted
files, the conversion's errors, bfloat16 training, remat, the sharding presets, LoRA and the
layer-wise fine-tuning strategies."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mtl import parallel, sharding
from mtl.convert import vision
from mtl.convert.table import ConversionError, state_dict_of_tensors
from mtl.errors import ConfigError, DataError
from mtl.models import HEADS, MultiTaskModel, build_model, precision
from mtl.models.functional import PureModule
from mtl.models.trunks import TRUNKS, resnet, vit
from mtl.paths import path_str
from mtl.runs.supervised_step import make_steps
from mtl.tasks import tasks_from_config
from mtl.train import loop
from mtl.transfer import lora, partition, strategies
from tests.helpers import sum_of_losses

# Tiny versions of each trunk, on 32x32 RGB images (resnet12: 28x28 grey, Omniglot's size).
TINY = {
    "resnet": ((32, 32, 3), dict(depth=18, width=8)),
    "resnet12": ((28, 28, 1), dict(channels=(8, 8, 16, 16))),
    "vit": (
        (32, 32, 3),
        dict(image_size=32, patch_size=8, hidden_size=32, depth=2, num_heads=4, mlp_ratio=2.0),
    ),
}
TASKS = tasks_from_config({"c": dict(head="classification", num_outputs=4)})


def _rngs() -> nnx.Rngs:
    """Keys of the "rbg" generator: random initialisation compiles several times faster on
    XLA CPU than with the default threefry keys (seconds per trunk)."""
    return nnx.Rngs(jax.random.key(0, impl="rbg"))


def _model(name: str, **options) -> MultiTaskModel:
    """A tiny trunk with a classification head, as `build_model` makes it (but `_rngs`)."""
    shape, tiny = TINY[name]
    trunk = TRUNKS.get(name)(shape, **tiny | options, rngs=_rngs())
    return MultiTaskModel(
        trunk, {"c": HEADS.get("classification")(trunk.out_features, 4, rngs=_rngs())}
    )


def _abstract_model(name: str) -> MultiTaskModel:
    """The tiny model as the engine builds it from a config, shapes only (no initialisation)."""
    shape, tiny = TINY[name]
    return nnx.eval_shape(lambda: build_model({"trunk": name, name: tiny}, TASKS, shape, seed=0))


def _images(shape, n=2, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, *shape)).astype(np.float32)


def _params(tree):
    return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(tree, (nnx.Param, nnx.BatchStat))))


# --- parity with torchvision / timm, through .safetensors and .pth files ---------------------


def _randomise_batch_norm(model) -> None:
    """Random running statistics and affine parameters, so that a wrong mapping shows."""
    import torch

    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(n, generator=generator) - 0.5)


def _save(model, tmp_path) -> tuple[str, str]:
    """The model's state dict as a .safetensors and a .pth file."""
    import torch
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    st, pth = str(tmp_path / "w.safetensors"), str(tmp_path / "w.pth")
    save_file(state, st)
    torch.save(state, pth)
    return st, pth


def _nchw(images: np.ndarray):
    import torch

    return torch.tensor(images).permute(0, 3, 1, 2)


def _assert_same_params(a, b) -> None:
    jax.tree.map(np.testing.assert_array_equal, _params(a), _params(b))


def _torchvision(name):
    import torchvision

    return getattr(torchvision.models, name)()


def _cifar_resnet18():
    """torchvision's resnet18 with the usual CIFAR stem: a 3x3 stride-1 conv1, no max-pool."""
    import torch

    model = _torchvision("resnet18")
    model.conv1 = torch.nn.Conv2d(3, 64, 3, padding=1, bias=False)
    model.maxpool = torch.nn.Identity()
    return model


def _timm(name, **kwargs):
    import timm

    return timm.create_model(name, pretrained=False, **kwargs)


@pytest.mark.parametrize(
    "make, depth",
    [
        (functools.partial(_torchvision, "resnet18"), 18),
        (functools.partial(_torchvision, "resnet50"), 50),
        (functools.partial(_timm, "resnet26"), 26),
        (_cifar_resnet18, 18),
    ],
    ids=["torchvision-resnet18", "torchvision-resnet50", "timm-resnet26", "cifar-stem-resnet18"],
)
def test_resnet_matches_torch_from_both_file_formats(make, depth, tmp_path):
    import torch

    torch.manual_seed(0)
    model = make().eval()
    _randomise_batch_norm(model)
    st, pth = _save(model, tmp_path)
    images = _images((32, 32, 3))
    model.fc = torch.nn.Identity()  # pooled features: what our trunk returns
    with torch.no_grad():
        reference = model(_nchw(images)).numpy()

    trunk = vision.load_resnet(st)  # depth, width and stem read from the tensors
    assert len(trunk.layers) == sum(resnet.DEPTHS[depth][1])
    assert trunk.out_features == reference.shape[1]
    ours = np.asarray(nnx.jit(lambda t, x: t(x))(trunk, images))
    assert ours.dtype == np.float32
    # Features reach ~80 (random batch norm through 16 blocks): 1e-4 of the largest.
    scale = max(1.0, float(np.abs(reference).max()))
    np.testing.assert_allclose(ours, reference, atol=1e-4 * scale)
    _assert_same_params(trunk, vision.load_resnet(pth, depth=depth))
    _assert_same_params(trunk, vision.resnet_from_torch(model))  # fc is gone: nothing dropped


def test_vit_matches_timm_from_both_file_formats(tmp_path):
    import torch

    torch.manual_seed(0)
    model = _timm("vit_tiny_patch16_224", depth=2, img_size=64).eval()
    st, pth = _save(model, tmp_path)
    images = _images((64, 64, 3))
    with torch.no_grad():
        tokens = model.forward_features(_nchw(images)).numpy()
        pre_logits = model.forward_head(torch.tensor(tokens), pre_logits=True).numpy()

    trunk = vision.load_vit(st, num_heads=3)
    assert vision.vit_options(vision.read_weights(st)) == dict(
        image_size=64, patch_size=16, hidden_size=192, depth=2, mlp_ratio=4.0, qkv_bias=True
    )
    np.testing.assert_allclose(np.asarray(trunk.encode(images)), tokens, atol=1e-4)
    np.testing.assert_allclose(np.asarray(trunk(images)), pre_logits, atol=1e-4)
    _assert_same_params(trunk, vision.load_vit(pth, num_heads=3))
    from_model = vision.vit_from_torch(model, pooling="mean")
    _assert_same_params(trunk, from_model)
    np.testing.assert_allclose(
        np.asarray(from_model(images)), tokens[:, 1:].mean(1), atol=1e-4
    )  # timm's global_pool="avg" with fc_norm=False


# --- conversion errors ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet18_weights():
    import torch

    torch.manual_seed(0)
    return state_dict_of_tensors(_torchvision("resnet18").state_dict())


def test_missing_leftover_and_mismatched_tensors_in_one_error(resnet18_weights, tmp_path):
    from safetensors.numpy import save_file

    weights = dict(resnet18_weights)
    del weights["layer3.1.bn2.running_var"]
    weights["extra.weight"] = np.zeros(3, np.float32)
    weights["layer2.0.conv1.weight"] = np.zeros((128, 64, 5, 5), np.float32)
    path = str(tmp_path / "bad.safetensors")
    save_file(weights, path)
    with pytest.raises(ConversionError) as error:
        vision.load_resnet(path)
    message = str(error.value)
    assert "left over (1):\n    extra.weight\n" in message  # fc. and num_batches_tracked: not
    assert "layer3.1.bn2.running_var (for layers/5/norm2/var)" in message
    assert "layer2.0.conv1.weight (128, 64, 5, 5) -> layers/2/conv1/kernel" in message
    assert "the model needs (3, 3, 64, 128)" in message
    # Dropped on purpose, the leftover goes; the other two problems stay.
    with pytest.raises(ConversionError) as error:
        vision.load_resnet(path, drop=[r"^extra\."])
    assert "left over" not in str(error.value) and "Shape mismatches (1)" in str(error.value)


def test_another_depth_is_named(resnet18_weights, tmp_path):
    from safetensors.numpy import save_file

    path = str(tmp_path / "resnet18.safetensors")
    save_file(resnet18_weights, path)
    with pytest.raises(ConversionError, match=r"depth=34 \(the tensors say 18\)"):
        vision.load_resnet(path, depth=34)
    with pytest.raises(DataError, match=r"no depth of the resnet trunk"):
        vision.resnet_options({k: v for k, v in resnet18_weights.items() if "layer4.1" not in k})


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_truncated_file_is_one_clear_data_error(resnet18_weights, tmp_path, suffix):
    import torch
    from safetensors.numpy import save_file

    path = tmp_path / f"w{suffix}"
    small = {k: v for k, v in resnet18_weights.items() if k.startswith("bn1.")}
    if suffix == ".pth":
        torch.save({k: torch.tensor(v) for k, v in small.items()}, path)
    else:
        save_file(small, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"damaged or truncated") as error:
        vision.load_resnet(str(path))
    assert not isinstance(error.value, ConversionError)


# --- options and inputs -------------------------------------------------------------------------


def test_options_and_input_shapes_are_checked():
    rngs = nnx.Rngs(0)
    with pytest.raises(ConfigError, match=r"model.resnet.depth must be 18, 26, .* got 20"):
        resnet.ResNet((32, 32, 3), depth=20, rngs=rngs)
    with pytest.raises(ConfigError, match=r"model.resnet.dtype must be one of float32"):
        resnet.ResNet((32, 32, 3), dtype="float16", rngs=rngs)
    with pytest.raises(ConfigError, match=r"at least 16x16"):
        TRUNKS.get("resnet12")((8, 8, 1), rngs=rngs)
    with pytest.raises(ConfigError, match=r"model.resnet12.channels must be four"):
        TRUNKS.get("resnet12")((28, 28, 1), channels=(8, 8), rngs=rngs)
    with pytest.raises(ConfigError, match=r"set --config.model.vit.image_size=32"):
        vit.ViT((32, 32, 3), rngs=rngs)
    with pytest.raises(ConfigError, match=r"hidden_size=30 is not divisible by .*num_heads=4"):
        vit.ViT((32, 32, 3), image_size=32, hidden_size=30, num_heads=4, rngs=rngs)
    with pytest.raises(ConfigError, match=r"\(height, width, channels\)"):
        resnet.ResNet((32, 32), rngs=rngs)
    shape, options = TINY["resnet"]
    trunk = nnx.eval_shape(lambda: resnet.ResNet(shape, **options, rngs=nnx.Rngs(0)))
    with pytest.raises(DataError, match=r"\[batch, height, width, 3\]"):
        trunk(jnp.zeros((2, 32, 32)))
    with pytest.raises(DataError, match=r"\[batch, height, width, 3\]"):
        trunk(jnp.zeros((2, 3, 32, 32)))  # channels first


# --- training: bfloat16, remat, sharding presets ---------------------------------------------


def _batch(shape, n, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    labels = {"c": rng.integers(0, 4, n).astype(np.int32)}
    return {"inputs": _images(shape, n, seed), "labels": labels, "masks": {"c": np.ones(n, bool)}}


def _run(name, options, optimizer, num_steps, mesh_config=None, rules=()):
    """`num_steps` engine train steps on one fixed batch; the states after each and the losses."""
    shape, _ = TINY[name]
    model = _model(name, **options)
    steps = make_steps(model, TASKS, optimizer, sum_of_losses(), seed=0)
    compiled = loop.compile_steps(
        steps.init, steps.train_step, parallel.make_mesh(mesh_config or {"data": 1}), rules
    )
    state = compiled.init()
    params, losses = [jax.device_get(state.params)], []
    batch = parallel.to_global(_batch(shape, 16), compiled.data_sharding)
    for _ in range(num_steps):
        state, metrics = compiled.train_step(state, batch)
        params.append(jax.device_get(state.params))
        losses.append(float(metrics["loss/c"]))
    return state, params, losses


@pytest.mark.parametrize("name", list(TINY))
def test_trains_in_bfloat16_with_float32_params(name):
    shape, _ = TINY[name]
    options = precision.trunk_options(name, {}, "bfloat16")  # what config.precision sets

    def outputs(x):
        model = _model(name, **options)
        return model.trunk(x, train=False), model(x)

    trunk_out, outputs = jax.eval_shape(outputs, _images(shape))  # shapes and dtypes only
    assert trunk_out.dtype == jnp.bfloat16 and outputs["c"].dtype == jnp.float32
    state, _, losses = _run(name, options, optax.adam(3e-3), 10)
    leaves = jax.tree.leaves(state.params) + jax.tree.leaves(state.model_state)
    assert all(leaf.dtype == jnp.float32 for leaf in leaves)
    assert np.isfinite(losses).all() and losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("name", ["resnet12", "vit"])  # resnet: with FSDP, below
def test_remat_gives_the_same_gradients(name):
    shape, tiny = TINY[name]
    images = jnp.asarray(_images(shape, 4))

    def grads(remat: bool):
        trunk = TRUNKS.get(name)(shape, **tiny, remat=remat, rngs=_rngs())
        pure, params, state = PureModule.split(trunk)  # as the engine's steps call a trunk

        def loss(p):
            # train=True: batch statistics, and running averages updated under remat
            out, new_state = pure.apply(p, state, images, train=True)
            return jnp.sum(jnp.sin(out)), new_state

        return jax.jit(jax.grad(loss, has_aux=True))(params)

    close = lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5)
    # The same gradients and the same new running statistics.
    jax.tree.map(close, grads(False), grads(True))


def _grads_and_losses(name, mesh_config=None, rules=(), **options):
    """Two SGD steps: the first step's gradients ((p0 - p1) / rate) and both losses."""
    rate = 0.1
    state, params, losses = _run(name, options, optax.sgd(rate), 2, mesh_config, rules)
    return state, jax.tree.map(lambda a, b: (a - b) / rate, params[0], params[1]), losses


@functools.cache
def _replicated(name):
    """One device, no rules."""
    return _grads_and_losses(name)[1:]


def _leaf(tree, path: str):
    for part in path.split("/"):
        tree = tree[int(part) if part.isdigit() else part]
    return tree


@pytest.mark.parametrize(
    "name, preset, mesh_config, axis, split",
    [
        ("resnet", "resnet_fsdp", {"data": 2, "fsdp": 4}, "fsdp", "layers/3/conv2/kernel"),
        ("vit", "vit_fsdp", {"data": 2, "fsdp": 4}, "fsdp", "layers/1/intermediate/kernel"),
        ("vit", "vit_megatron", {"model": 2}, "model", "layers/0/attention/query/kernel"),
    ],
)
def test_sharding_preset_keeps_the_step(name, preset, mesh_config, axis, split):
    assert jax.device_count() == 8, "conftest sets 8 fake CPU devices"
    rules = sharding.config_rules({"sharding": {"preset": preset}})  # as a config names it
    assert rules == (resnet if name == "resnet" else vit).SHARDING_PRESETS[preset]
    # The resnet run also recomputes its blocks (remat), the memory-saving companion of FSDP,
    # which must not change the step either (the other trunks' remat is tested above).
    state, grads, losses = _grads_and_losses(name, mesh_config, rules, remat=name == "resnet")
    kernel = _leaf(state.params["trunk"], split)
    assert axis in str(kernel.sharding.spec)
    assert kernel.addressable_shards[0].data.size < kernel.size  # really split
    ref_grads, ref_losses = _replicated(name)
    # The second loss follows one Adam step (each parameter moves by about the learning rate,
    # whatever its gradient's size), so the reductions' order shows in it: 1.8e-5 relative
    # for the ResNet-18 with XLA's own CPU reductions (mtl/xla_flags.py).
    np.testing.assert_allclose(losses, ref_losses, rtol=5e-5, atol=1e-5)
    # Gradients reach ~1.5; summed in another order over 8 devices (batch-norm statistics
    # included) they differ by up to 2e-5 (~1.3e-5 of the largest) with XLA's own CPU
    # reductions; a sharding mistake moves them by orders of magnitude more.
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=5e-5)
    jax.tree.map(close, ref_grads, grads)


def test_presets_validate_against_the_trunks():
    """Every rule of every preset matches some parameter of its trunk, and splits it evenly
    on a mesh of 2 x 2 x 2."""
    mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "model": 2})
    for name, presets in (("resnet", resnet.SHARDING_PRESETS), ("vit", vit.SHARDING_PRESETS)):
        model = _abstract_model(name)
        shapes = {"params": nnx.to_pure_dict(nnx.state(model, nnx.Param))}
        paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(shapes)[0]]
        for preset, rules in presets.items():
            sharding.tree_shardings(shapes, rules, mesh)  # raises if a split does not divide
            for pattern, _ in rules:
                hits = [p for p in paths if re.search(pattern, path_str(p))]
                assert hits, (preset, pattern)


# --- LoRA and the layer-wise strategies ------------------------------------------------------


def test_lora_on_the_vit_linears_and_merge():
    shape, tiny = TINY["vit"]
    trunk = vit.ViT(shape, **tiny, rngs=_rngs())
    images = jnp.asarray(_images(shape))
    before = trunk(images)
    changed = lora.add_lora(trunk, rank=2, alpha=4.0, rngs=_rngs())
    names = ("attention/query", "attention/key", "attention/value", "attention/output")
    assert sorted(changed) == sorted(
        f"layers/{i}/{n}" for i in range(2) for n in (*names, "intermediate", "output")
    )
    np.testing.assert_allclose(trunk(images), before, atol=1e-6)  # lora_b starts at zero
    # Train the factors a little, then merge them into the kernels: the same function.
    for i, layer in enumerate(trunk.layers):  # random: a constant row would add a shift to
        b = layer.output.lora_b  # every feature, which the layer norms remove
        b[...] = 0.1 * jax.random.normal(jax.random.key(i), b.shape)
    adapted = trunk(images)
    assert not np.allclose(adapted, before, atol=1e-3)
    lora.merge(trunk)
    np.testing.assert_allclose(trunk(images), adapted, atol=1e-5)


def test_lora_on_the_resnet_convolutions_and_merge():
    shape, tiny = TINY["resnet"]
    trunk = resnet.ResNet(shape, **tiny, rngs=_rngs())
    block = trunk.layers[2]  # the first of stage 2: stride 2, padding 1, a downsample
    features = jnp.asarray(_images((8, 8, 8)))
    forward = lambda: np.asarray(block(features, train=False))
    before = forward()
    changed = lora.add_lora(trunk, rank=2, alpha=4.0, targets=r"conv\d$", rngs=_rngs())
    assert sorted(changed) == sorted(f"layers/{i}/conv{j}" for i in range(8) for j in (1, 2))
    assert isinstance(block.conv1, lora.LoRAConv) and block.conv1.strides == (2, 2)
    np.testing.assert_allclose(forward(), before, atol=1e-6)  # lora_b starts at zero
    for conv in (block.conv1, block.conv2):
        conv.lora_b[...] = 0.1 * jax.random.normal(jax.random.key(0), conv.lora_b.shape)
    adapted = forward()
    assert not np.allclose(adapted, before, atol=1e-3)
    merged_params = lora.merge_params(nnx.to_pure_dict(nnx.state(block, nnx.Param)), 4.0 / 2)
    assert lora.merge(block) == ["conv1", "conv2"]
    assert isinstance(block.conv1, nnx.Conv)
    np.testing.assert_allclose(forward(), adapted, atol=1e-5)
    jax.tree.map(
        np.testing.assert_allclose, nnx.to_pure_dict(nnx.state(block, nnx.Param)), merged_params
    )


@pytest.mark.parametrize("name, count", [("resnet", 8), ("resnet12", 4), ("vit", 2)])
def test_layerwise_strategies_see_the_blocks(name, count):
    params = nnx.to_pure_dict(nnx.state(_abstract_model(name), nnx.Param))
    assert strategies.num_layers(params) == count
    config = strategies.default_config().to_dict()
    first = "conv1/kernel" if name.startswith("resnet") else "attention/query/kernel"
    for strategy in ("llrd", "gradual_unfreezing"):
        plan = strategies.plan(config | {"strategy": strategy}, params)
        labels = partition.label_params(params, plan.rules)  # every parameter has a group
        assert _leaf(labels, f"trunk/layers/0/{first}") == "layer_0"
        assert _leaf(labels, f"trunk/layers/{count - 1}/{first}") == f"layer_{count - 1}"
        if name != "resnet12":  # resnet12 has no stem
            assert next(iter(jax.tree.leaves(labels["trunk"]["embeddings"]))) == "embeddings"
    if name == "vit":  # the final norm trains with the top, as BERT's pooler
        assert labels["trunk"]["norm"]["scale"] == "pooler"


def test_lora_on_conv4_convolutions_acts_in_both_conv_forms():
    """conv4's matmul form reads the kernel itself: the LoRA update must reach it too."""
    import jax.numpy as jnp
    from flax import nnx

    from mtl.models.trunks.conv4 import Conv4
    from mtl.transfer import lora

    x = jnp.asarray(np.random.default_rng(0).random((2, 16, 16, 1)), jnp.float32)
    outputs = {}
    for form in ("xla", "matmul"):
        trunk = Conv4((16, 16, 1), filters=4, conv=form, rngs=nnx.Rngs(0))
        lora.add_lora(trunk, rank=2, alpha=4.0, targets=r"conv$", rngs=nnx.Rngs(1))
        before = np.asarray(trunk(x, train=False))
        trunk.blocks[0].conv.lora_b[...] = jnp.ones_like(trunk.blocks[0].conv.lora_b[...])
        outputs[form] = np.asarray(trunk(x, train=False))
        assert np.abs(outputs[form] - before).max() > 1e-3
    np.testing.assert_allclose(outputs["xla"], outputs["matmul"], atol=1e-5)


def test_a_converted_resnet_checkpoint_starts_a_run_with_its_running_statistics(tmp_path):
    """torchvision weights -> `write_vision_checkpoint` -> `init.checkpoint` of an image-folder
    run: the trunk the run starts from computes torchvision's features (weights and batch-norm
    running statistics restored), and the run trains from it (its head: the frozen trunk
    keeps the test small)."""
    import json

    import torch

    from mtl.convert import write_vision_checkpoint
    from mtl.runs import supervised
    from mtl.transfer import restore
    from tests.own_data import write_tree
    from tests.test_transfer import toy_supervised_config

    reference = _torchvision("resnet18").eval()
    _randomise_batch_norm(reference)
    _, pth = _save(reference, tmp_path)
    model = write_vision_checkpoint(pth, str(tmp_path / "ckpt"), family="resnet")
    assert model["resnet"] == {"depth": 18, "width": 64, "stem": "imagenet"}
    assert (tmp_path / "ckpt" / "state").is_dir()  # the running statistics

    fresh = _model("resnet", depth=18, width=64)
    report = restore.restore_trunk(fresh.trunk, restore.find_source(str(tmp_path / "ckpt")))
    assert len(report["statistics"]) == 2 * 20  # mean and var of the 20 batch norms
    images = _images((32, 32, 3))
    with torch.no_grad():
        reference.fc = torch.nn.Identity()
        expected = reference(_nchw(images))
    ours = np.asarray(fresh.trunk(jnp.asarray(images), train=False))
    np.testing.assert_allclose(ours, expected.numpy(), atol=1e-4 * np.abs(ours).max())

    root = tmp_path / "birds"
    write_tree(str(root), {"a": 6, "b": 6}, seed=0)
    config = toy_supervised_config(num_steps=1)
    config.batch_size = 8
    config.data = dict(name="image_folder", roots={"birds": str(root)}, image_size=32, channels=3)
    config.tasks = {"birds": dict(head="classification", num_outputs=2)}
    config.model.trunk = "resnet"
    config.model.resnet.update(model["resnet"])
    config.init = dict(checkpoint=str(tmp_path / "ckpt"), keep_fresh=restore.KEEP_FRESH,
                       skip=restore.SKIP)  # fmt: skip
    from mtl.transfer import strategies

    config.finetune = strategies.default_config()
    config.finetune.strategy = "feature_extraction"
    config.trainer = "finetune"
    workdir = tmp_path / "run"
    supervised.train(config, str(workdir))
    info = json.loads((workdir / "finetune.json").read_text())
    assert info["restored"]["statistics"] == 40 and info["restored"]["fresh"] == 0


def test_convert_cli_takes_a_vit_file_and_names_missing_heads(tmp_path):
    import json
    import subprocess
    import sys

    from tests.conftest import REPO

    _, pth = _save(_timm("vit_tiny_patch16_224", depth=1, img_size=32, patch_size=16), tmp_path)

    def convert(*args):
        return subprocess.run([sys.executable, "-m", "launch.convert", *args], cwd=REPO,
                              capture_output=True, text=True, timeout=300)  # fmt: skip

    missing = convert(f"--weights={pth}", "--family=vit", f"--out={tmp_path / 'a'}")
    assert missing.returncode == 2 and "number of heads" in missing.stderr
    assert not (tmp_path / "a").exists()
    done = convert(f"--weights={pth}", "--family=vit", "--num_heads=3", f"--out={tmp_path / 'b'}")
    assert done.returncode == 0, done.stderr[-2000:]
    model = json.loads((tmp_path / "b" / "model.json").read_text())
    assert model["trunk"] == "vit" and model["vit"]["num_heads"] == 3
    assert model["vit"]["image_size"] == 32 and model["vit"]["depth"] == 1


def test_resnet12_conv_forms_give_the_same_outputs_and_gradients():
    x = jnp.asarray(_images((16, 16, 1), n=2))
    values = {}
    for form in ("xla", "matmul"):
        trunk = TRUNKS.get("resnet12")((16, 16, 1), channels=(4, 4, 4, 4), conv=form,
                                       rngs=nnx.Rngs(0))  # fmt: skip
        pure, params, state = PureModule.split(trunk)
        loss = lambda p, pure=pure, state=state: jnp.sum(pure.apply(p, state, x, train=True)[0])
        values[form] = jax.jit(jax.value_and_grad(loss))(params)
    np.testing.assert_allclose(values["xla"][0], values["matmul"][0], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4),
                 values["xla"][1], values["matmul"][1])  # fmt: skip
