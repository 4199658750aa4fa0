"""The meta-learning loop end to end on sinusoids: results, resume, SIGTERM, sharding, errors."""

import json
import os

import jax
import numpy as np
import optax
import pytest

from configs import sinusoid_maml
from mtl import parallel, preemption
from mtl.errors import ConfigError
from mtl.meta import families, methods
from mtl.meta import model as mm
from mtl.runs import meta as meta_train
from mtl.runs import meta_eval
from mtl.train.state import TrainState


def tiny_config(**meta):
    config = sinusoid_maml.get_config()
    config.num_steps = 4
    config.log_every = 2
    config.model.mlp.hidden = (8, 8)
    config.meta.update(meta_batch=8, shots=5, queries=5, **meta)
    config.eval.update(episodes=16, batch=8, inner_steps=2, shots=(5,), queries=10)
    config.baseline.update(joint=False)
    config.checkpoint.every = 2
    return config


def _final_meta(workdir):
    return jax.tree_util.tree_map(np.asarray, meta_train.load_state(workdir)["params"])


def test_run_writes_results_curve_and_plot(tmp_path):
    config = tiny_config()
    config.baseline.update(joint=True, steps=3, finetune_lrs=(0.01, 0.02))
    results = meta_train.train(config, str(tmp_path))["meta_test"]
    curve = results["test"]["5shot"]
    assert len(curve["mean"]) == 3 and len(curve["ci95"]) == 3 and curve["episodes"] == 16
    assert results["baseline"]["5shot"]["finetune_lr"] in (0.01, 0.02)
    (line,) = [x for x in meta_eval.comparison(results) if "5shot" in x]
    assert "after 2 steps (pretrained fine-tuned at lr" in line
    assert (tmp_path / "adaptation.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["test"]["5shot"]["mean"] == pytest.approx(curve["mean"])
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("test/mse/maml/5shot/step_2" in x for x in lines)
    assert any("train/query_mse" in x for x in lines)


def test_resumed_and_preempted_run_equals_uninterrupted(tmp_path):
    whole, parts = str(tmp_path / "whole"), str(tmp_path / "parts")
    meta_train.train(tiny_config(), whole)
    preemption.request_stop()  # as SIGTERM would: stop after the current step, saved
    try:
        assert meta_train.train(tiny_config(), parts).stopped
    finally:
        preemption.reset()
    assert meta_train.load_state(parts)["step"] == 1
    meta_train.train(tiny_config(), parts)  # the same command resumes
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
        _final_meta(whole),
        _final_meta(parts),
    )


def test_eight_devices_give_the_one_device_meta_gradient():
    assert jax.device_count() == 8
    config = tiny_config(inner_steps=2)
    family = families.load(config.data)
    model, params, state = mm.build(config.model, "regression", 1, (1,), seed=0)
    learner = methods.build(config.meta, model, params, state)
    meta, mstate = learner.init(params, state)
    batch = family.sample("train", 0, 0, batch=8, ways=1, shots=5, queries=5)
    out = []
    for devices in (1, 8):
        mesh = parallel.make_mesh({"data": devices})
        step = jax.jit(
            meta_train.make_train_step(learner, optax.sgd(1.0), mesh, ways=1, metric="mse")
        )
        sharded = parallel.to_global(batch, parallel.batch_sharding(mesh))
        if devices == 8:
            assert sharded["query"]["x"].addressable_shards[0].data.shape[0] == 1
        state0 = TrainState.create(meta, mstate, optax.sgd(1.0), seed=0, losses=("meta-loss",))
        new, metrics = step(state0, sharded)
        out.append((jax.device_get(new.params), jax.device_get(metrics)))
    (one, m1), (eight, m8) = out
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), one, eight)
    for k in m1:
        np.testing.assert_allclose(m1[k], m8[k], rtol=1e-5)
    moved = jax.tree_util.tree_map(lambda a, b: np.abs(a - b).max(), one, meta)
    assert max(jax.tree.leaves(moved)) > 0


@pytest.mark.parametrize(
    "override, message",
    [
        (dict(method="mamll"), r"Unknown meta-learning method 'mamll'.*Did you mean 'maml'"),
        (dict(ways=5), r"Regression tasks have no classes: set meta.ways=1"),
        (dict(meta_batch=12), r"meta.meta_batch=12 must be divisible by the 8"),
        (dict(learn_inner_lr="per_step"), r"meta.learn_inner_lr must be one of"),
        (dict(method="protonets"), r"protonets.*needs classification"),
    ],
)
def test_bad_config_fails_before_building(tmp_path, monkeypatch, override, message):
    def no_build(*args, **kwargs):
        raise AssertionError("the model was built before the config was checked")

    monkeypatch.setattr(mm, "build", no_build)
    config = tiny_config()
    config.meta.update(**override)
    with pytest.raises(ConfigError, match=message):
        meta_train.train(config, str(tmp_path))
    assert not os.path.exists(tmp_path / "checkpoints")


def test_unknown_data_option_is_named(tmp_path):
    config = tiny_config()
    config.data.amplitud = (0.1, 5.0)
    with pytest.raises(ConfigError, match=r"no option\(s\) 'amplitud'.*amplitude="):
        meta_train.train(config, str(tmp_path))
