"""The one run loop on a small Experiment built by hand: what every kind of run relies on."""

from __future__ import annotations

import json
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from mtl import parallel, preemption
from mtl.data.batches import ArrayBatches, mixed_sampler
from mtl.errors import ConfigError
from mtl.train import Evaluator, Experiment, TrainState, run

RNG = np.random.default_rng(0)
DATA = {"inputs": RNG.normal(size=(256, 4)).astype(np.float32)}
DATA["labels"] = DATA["inputs"] @ np.array([1.0, -2.0, 0.5, 3.0], np.float32)


def _config(**overrides) -> ml_collections.ConfigDict:
    config = dict(seed=0, num_steps=12, log_every=4, checkpoint=dict(every=4, keep=5))
    return ml_collections.ConfigDict(config | overrides)


def linear_regression(config, *, lr: float = 0.1, evaluators=(), fresh_start=None) -> Experiment:
    """Least squares on DATA with SGD; `extras["seen"]` counts the rows trained on."""
    tx = optax.sgd(lr)

    def init() -> TrainState:
        return TrainState.create(
            {"w": jnp.zeros(4)}, {}, tx, seed=0, losses=("mse",), extras={"seen": jnp.int32(0)}
        )

    def train_step(state: TrainState, batch):
        loss_fn = lambda w: jnp.mean((batch["inputs"] @ w["w"] - batch["labels"]) ** 2)  # noqa: E731
        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new = state.advanced(optax.apply_updates(state.params, updates), updates, loss,
                             opt_state=opt_state)  # fmt: skip
        return new.with_extras(seen=state.extras["seen"] + batch["inputs"].shape[0]), {"mse": loss}

    return Experiment(
        config=config,
        init=init,
        train_step=train_step,
        batches=ArrayBatches(DATA, mixed_sampler(0, DATA, 16), 16),
        mesh=parallel.make_mesh({"data": 8}),
        guarded=("seed",),
        loss_names=("mse",),
        progress={"mse": "mse"},
        evaluators=tuple(evaluators),
        fresh_start=fresh_start,
    )


def test_advanced_keeps_the_first_non_finite_step():
    state = TrainState.create({"w": jnp.zeros(2)}, {}, optax.sgd(1.0), seed=0, losses=("a", "b"))
    zero = {"w": jnp.zeros(2)}
    state = state.advanced(zero, zero, jnp.array([1.0, 2.0]))
    assert int(state.nonfinite["step"]) == -1
    state = state.advanced(zero, zero, jnp.array([1.0, jnp.nan]))
    state = state.advanced(zero, {"w": jnp.array([jnp.inf, 0.0])}, jnp.array([jnp.nan, 1.0]))
    assert int(state.step) == 3 and int(state.nonfinite["step"]) == 2
    assert state.nonfinite["flags"].tolist() == [False, True]  # the first bad step's flags


def test_loss_drops_and_extras_are_saved_and_resumed(tmp_path):
    whole = run(linear_regression(_config()), str(tmp_path / "whole"))
    assert not whole.stopped and int(whole.state.step) == 12
    assert int(whole.state.extras["seen"]) == 12 * 16
    records = [json.loads(x) for x in (tmp_path / "whole/metrics.jsonl").read_text().splitlines()]
    losses = [r["train/mse"] for r in records]
    assert [r["step"] for r in records] == [4, 8, 12] and losses[-1] < 0.2 * losses[0]

    parts = str(tmp_path / "parts")
    preemption.request_stop()
    try:
        stopped = run(linear_regression(_config()), parts)
    finally:
        preemption.reset()
    assert stopped.stopped and int(stopped.state.step) == 1
    resumed = run(linear_regression(_config()), parts)
    assert int(resumed.state.extras["seen"]) == 12 * 16
    np.testing.assert_array_equal(resumed.state.params["w"], whole.state.params["w"])


def test_evaluators_run_on_their_schedule_and_at_the_end(tmp_path):
    calls = []

    def record(state, context):
        calls.append((context.step, context.final))
        return {"w0": float(state.params["w"][0])}

    periodic = Evaluator("probe", record, every=8, final=True)
    result = run(linear_regression(_config(), evaluators=[periodic]), str(tmp_path / "a"))
    assert calls == [(8, False), (12, True)]
    assert result.metrics["probe"]["w0"] == pytest.approx(float(result.state.params["w"][0]))

    calls.clear()
    config = _config(evals={"probe": {"every": 4}})  # the config sets the schedule
    run(linear_regression(config, evaluators=[periodic]), str(tmp_path / "b"))
    assert calls == [(4, False), (8, False), (12, True)]

    with pytest.raises(ConfigError, match=r"evals names evaluator\(s\) prob that .*: probe"):
        bad = _config(evals={"prob": {"every": 4}})
        run(linear_regression(bad, evaluators=[periodic]), str(tmp_path / "c"))


def test_fresh_start_runs_only_when_no_checkpoint_exists(tmp_path):
    starts = []

    def warm(state: TrainState, workdir: str) -> TrainState:
        starts.append(workdir)
        return state.replace(params={"w": jnp.full(4, 0.5)})

    workdir = str(tmp_path / "run")
    preemption.request_stop()
    try:
        run(linear_regression(_config(), fresh_start=warm), workdir)
    finally:
        preemption.reset()
    run(linear_regression(_config(), fresh_start=warm), workdir)
    assert starts == [workdir]


def test_non_finite_loss_stops_before_saving_it(tmp_path):
    workdir = tmp_path / "diverged"
    with pytest.raises(FloatingPointError, match=r"Non-finite loss of task\(s\) mse") as error:
        run(linear_regression(_config(), lr=1e4), str(workdir))
    bad_step = int(re.search(r"at step (\d+)", str(error.value)).group(1))
    saved = [int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
    assert 0 < bad_step <= 12 and all(step < bad_step for step in saved)
