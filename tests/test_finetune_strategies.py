"""Fine-tuning strategies on a tiny BERT: what trains, how fast, from when; LoRA; opt. state."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mtl import optim
from mtl.errors import ConfigError
from mtl.models import build_model
from mtl.runs.supervised_step import make_steps
from mtl.tasks import tasks_from_config
from mtl.transfer import lora, partition, strategies
from tests.conftest import TINY_BERT
from tests.helpers import sum_of_losses

NUM_LAYERS = TINY_BERT["num_layers"]
LR = 1e-2


def tiny_model(pooling="mean", seed=0):
    tasks = tasks_from_config(
        {"a": dict(num_outputs=2), "b": dict(num_outputs=3)}  # two heads, as in multi-task
    )
    options = TINY_BERT | dict(pooling=pooling, dropout=0.0, attention_dropout=0.0)
    shape = {"input_ids": (16,), "attention_mask": (16,), "token_type_ids": (16,)}
    model = build_model({"trunk": "bert", "bert": options}, tasks, shape, seed)
    return model, tasks


def text_batch(n=8, length=16, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, length + 1, n)
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
    ids = rng.integers(1000, 30000, (n, length)).astype(np.int32) * mask
    return {
        "inputs": {"input_ids": ids, "attention_mask": mask, "token_type_ids": 0 * ids},
        "labels": {"a": rng.integers(0, 2, n).astype(np.int32), "b": rng.integers(0, 3, n)},
        "masks": {"a": rng.random(n) < 0.7, "b": rng.random(n) < 0.7},
    }


def finetune_config(strategy, **options):
    config = strategies.default_config()
    config.strategy = strategy
    for key, value in options.items():
        if isinstance(value, dict):
            config[key].update(value)
        else:
            config[key] = value
    return config


def optimizer_config(name="adam", schedule="constant"):
    config = optim.default_config()
    config.update(name=name, learning_rate=LR, schedule=schedule)
    return config


def params_of(model):
    pure = lambda m: nnx.to_pure_dict(nnx.state(m, nnx.Param))
    return {"trunk": pure(model.trunk), "heads": {k: pure(h) for k, h in model.heads.items()}}


def setup(strategy, num_steps=20, optimizer=None, **options):
    model, tasks = tiny_model()
    config = finetune_config(strategy, **options)
    strategies.check(config, num_steps)
    strategies.prepare_model(model, config, seed=0)
    plan = strategies.plan(config, params_of(model))
    tx = strategies.make_optimizer(plan, optimizer or optimizer_config(), num_steps)
    steps = make_steps(model, tasks, tx, sum_of_losses(), seed=0)
    return plan, jax.jit(steps.init)(), jax.jit(steps.train_step)


def flat(tree):
    return {
        partition.path_str(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(tree)
    }


def changed(before, after):
    a, b = flat(before), flat(after)
    return {p for p in a if not np.array_equal(a[p], b[p])}


def opt_state_sizes(opt_state):
    """Array leaves of the optimizer state (MaskedNode placeholders have no leaves)."""
    return sorted(leaf.size for leaf in jax.tree_util.tree_leaves(opt_state) if leaf.ndim)


def test_feature_extraction_freezes_trunk_without_optimizer_state():
    plan, state, step = setup("feature_extraction")
    new, _ = step(state, text_batch())
    moved = changed(state.params, new.params)
    assert moved and all(p.startswith("heads/") for p in moved)
    head_sizes = sorted(v.size for p, v in flat(state.params).items() if p.startswith("heads/"))
    # Adam keeps mu and nu for the heads only: nothing of the size of any trunk weight.
    assert opt_state_sizes(new.opt_state) == sorted(head_sizes * 2)


def test_full_fine_tuning_moves_everything():
    _, state, step = setup("full")
    new, _ = step(state, text_batch())
    assert changed(state.params, new.params) == set(flat(state.params))


def test_freeze_rule_applies_under_any_strategy():
    _, state, step = setup("full", freeze=("^trunk/embeddings/",))
    new, _ = step(state, text_batch())
    moved = changed(state.params, new.params)
    assert not any(p.startswith("trunk/embeddings/") for p in moved)
    assert any(p.startswith("trunk/layers/0/") for p in moved)


def test_llrd_rates_per_layer():
    """Adam's first step moves every weight by about lr * multiplier (|g| >> eps)."""
    decay = 0.5
    plan, state, step = setup("llrd", llrd=dict(decay=decay))
    new, _ = step(state, text_batch())
    before, after = flat(state.params), flat(new.params)
    size = {p: np.max(np.abs(after[p] - before[p])) for p in before}
    expect = {"heads/": 1.0, "trunk/embeddings/": decay ** (NUM_LAYERS + 1)}
    expect |= {f"trunk/layers/{i}/": decay ** (NUM_LAYERS - i) for i in range(NUM_LAYERS)}
    for prefix, mult in expect.items():
        moves = [v for p, v in size.items() if p.startswith(prefix) and v > 0]
        assert moves, prefix
        np.testing.assert_allclose(max(moves), LR * mult, rtol=1e-3, err_msg=prefix)
    groups = strategies.summary(plan, state.params)["groups"]
    assert groups["layer_0"]["lr_mult"] == decay**NUM_LAYERS


def test_gradual_unfreezing_schedule():
    every = 2
    plan, state, step = setup("gradual_unfreezing", gradual_unfreezing=dict(every=every))
    group_of = flat(partition.label_params(state.params, plan.rules))
    first_move = {}
    for i in range(1, 4 * every + 2):
        new, _ = step(state, text_batch(seed=i))
        for p in changed(state.params, new.params):
            first_move.setdefault(str(group_of[p]), i)
        state = new
    # Step k (1-based) applies update k-1: a group that starts at s first moves at step s + 1.
    assert first_move == {
        "heads": 1,
        "layer_1": every + 1,  # the top layer first
        "layer_0": 2 * every + 1,
        "embeddings": 3 * every + 1,
    }


def test_lp_ft_probes_then_fine_tunes():
    probe = 3
    _, state, step = setup("lp_ft", lp_ft=dict(probe_steps=probe, trunk_lr_mult=0.5))
    for i in range(probe):
        new, _ = step(state, text_batch(seed=i))
        assert all(p.startswith("heads/") for p in changed(state.params, new.params))
        state = new
    new, _ = step(state, text_batch(seed=9))
    moved = changed(state.params, new.params)
    assert any(p.startswith("trunk/layers/") for p in moved)
    # The trunk's Adam starts at its first real step: the bias correction makes it lr * mult.
    delta = (
        flat(new.params)["trunk/layers/0/intermediate/kernel"]
        - flat(state.params)["trunk/layers/0/intermediate/kernel"]
    )
    np.testing.assert_allclose(np.max(np.abs(delta)), LR * 0.5, rtol=1e-3)


def test_lora_trains_only_factors_and_heads_and_merges():
    plan, state, step = setup("lora", lora=dict(rank=2, alpha=4.0))
    paths = flat(state.params)
    factors = {p for p in paths if p.endswith(("lora_a", "lora_b"))}
    assert len(factors) == 2 * 6 * NUM_LAYERS  # q, k, v, attention output, intermediate, output
    new, _ = step(state, text_batch())
    new, _ = step(new, text_batch(seed=1))  # lora_a moves once lora_b is non-zero
    moved = changed(state.params, new.params)
    assert moved == factors | {p for p in paths if p.startswith("heads/")}
    summary = strategies.summary(plan, state.params)
    assert summary["trainable"] == sum(paths[p].size for p in moved)
    trainable_sizes = sorted(paths[p].size for p in moved)
    assert opt_state_sizes(new.opt_state) == sorted(trainable_sizes * 2)


def test_lora_merge_equals_unmerged_forward():
    model, _ = tiny_model()
    batch = text_batch()["inputs"]
    before = model.trunk(batch)
    lora.add_lora(model.trunk, rank=3, alpha=6.0, rngs=nnx.Rngs(1))
    np.testing.assert_allclose(model.trunk(batch), before, atol=1e-6)  # lora_b starts at 0
    for path, node in nnx.iter_graph(model.trunk):
        if isinstance(node, lora.LoRALinear):
            node.lora_b[...] = 0.1 * jax.random.normal(jax.random.key(len(path)), node.lora_b.shape)
    unmerged = model.trunk(batch)
    assert np.abs(unmerged - before).max() > 1e-2
    params = nnx.to_pure_dict(nnx.state(model.trunk, nnx.Param))
    merged_params = lora.merge_params(params, scale=6.0 / 3)
    assert len(lora.merge(model.trunk)) == 6 * NUM_LAYERS
    assert not any(isinstance(n, lora.LoRALinear) for _, n in nnx.iter_graph(model.trunk))
    np.testing.assert_allclose(model.trunk(batch), unmerged, atol=1e-5)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
        merged_params,
        nnx.to_pure_dict(nnx.state(model.trunk, nnx.Param)),
    )


def test_gated_group_keeps_still_state_and_clip_ignores_inactive():
    tx = partition.gated(optax.adam(1.0), start_step=2)
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    for _ in range(2):
        updates, state = tx.update({"w": jnp.ones(3)}, state, params)
        np.testing.assert_array_equal(updates["w"], 0.0)
    assert int(state.inner[0].count) == 0  # Adam has not counted the held steps
    updates, state = tx.update({"w": jnp.ones(3)}, state, params)
    np.testing.assert_allclose(updates["w"], -1.0, rtol=1e-4)  # Adam: -lr * g / (|g| + eps)

    plan = strategies.Plan(
        [("^a", "a"), ("^b", "b"), ("", "frozen")],
        {
            "a": strategies.Group(),
            "b": strategies.Group(start=1),
            "frozen": strategies.Group(frozen=True),
        },
    )
    clip = strategies.clip_trainable(plan, max_norm=1.0)
    grads = {"a": jnp.full(4, 0.25), "b": jnp.full(4, 100.0), "c": jnp.full(4, 100.0)}
    state = clip.init(grads)
    out, state = clip.update(grads, state)  # only `a` (norm 0.5) counts at step 0: no clipping
    np.testing.assert_allclose(out["a"], 0.25)
    out, state = clip.update(grads, state)  # now `b` counts too
    np.testing.assert_allclose(np.linalg.norm(np.concatenate([out["a"], out["b"]])), 1.0, rtol=1e-5)


def test_frozen_groups_cost_no_gradient_flops():
    """XLA drops the backward work that only fed frozen parameters."""
    flops = {}
    for strategy in ("full", "lora", "feature_extraction"):
        _, state, step = setup(strategy)
        cost = step.lower(state, text_batch()).compile().cost_analysis()
        flops[strategy] = (cost[0] if isinstance(cost, list) else cost)["flops"]
    assert flops["feature_extraction"] < flops["full"] / 3, flops
    assert flops["lora"] < 2 * flops["full"] / 3, flops


def test_rules_must_cover_every_parameter():
    with pytest.raises(ConfigError, match=r"No rule matches .* trunk/layers/0"):
        partition.label_params({"trunk": {"layers": {0: {"w": jnp.ones(2)}}}}, [("^heads/", "h")])


@pytest.mark.parametrize(
    ("strategy", "options", "message"),
    [
        ("ful", {}, "Did you mean 'full'"),
        ("llrd", {"llrd": dict(decay=1.5)}, "decay must be in"),
        (
            "lp_ft",
            {"lp_ft": dict(probe_steps=20)},
            r"probe_steps=20 must lie in \(0, num_steps=20\)",
        ),
        ("lora", {"lora": dict(rank=0)}, "rank must be >= 1"),
    ],
)
def test_strategy_config_errors(strategy, options, message):
    with pytest.raises(ConfigError, match=message):
        strategies.check(finetune_config(strategy, **options), num_steps=20)


def test_lora_targets_that_match_nothing():
    model, _ = tiny_model()
    with pytest.raises(ConfigError, match="match no linear layer.*layers/0/attention/key"):
        lora.add_lora(model.trunk, rank=2, alpha=2.0, targets="nothing_here", rngs=nnx.Rngs(0))


def test_llrd_sees_the_decoder_layers_and_puts_its_final_norm_on_top():
    from mtl.models.trunks.decoder import Decoder

    trunk = Decoder(vocab_size=32, hidden_size=8, num_layers=3, num_heads=2, num_kv_heads=2,
                    intermediate_size=16, max_position_embeddings=16, rngs=nnx.Rngs(0))  # fmt: skip
    params = {"trunk": nnx.to_pure_dict(nnx.state(trunk, nnx.Param)), "heads": {}}
    config = strategies.default_config()
    config.strategy = "llrd"
    plan = strategies.plan(config, params)
    assert strategies.num_layers(params) == 3
    labels = partition.label_params(params, plan.rules)
    assert labels["trunk"]["norm"]["scale"] == "pooler"  # top: full learning rate
    assert labels["trunk"]["layers"][0]["attention"]["query"]["kernel"] == "layer_0"
    assert plan.groups["layer_0"].lr_mult == pytest.approx(0.8**3)
