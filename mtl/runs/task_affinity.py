"""A multi-task run that also measures the lookahead inter-task affinity (`trainer="affinity"`).

It is the supervised run (`mtl.runs.supervised`) with a train step that, every
`config.affinity.every` steps, computes `mtl.transfer.affinity.lookahead_affinity` on the batch
at the current parameters (before the step) and adds it to a running sum kept in the train
state (`extras["affinity"]`), so it is checkpointed and a resumed run keeps accumulating. At
the end the mean matrix, the suggested groupings and a heatmap go to `<workdir>/affinity/`.

    python -m launch.train --config=configs/omniglot_affinity.py --workdir=/tmp/affinity
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections

from mtl.errors import ConfigError
from mtl.runs import supervised
from mtl.runs.supervised_step import Steps
from mtl.train.experiment import Result
from mtl.train.loop import run
from mtl.train.state import TrainState
from mtl.transfer import affinity


def default_config() -> ml_collections.ConfigDict:
    """`every`: steps between measurements; `lr`: the SGD lookahead step; `max_groups`."""
    return ml_collections.ConfigDict(dict(every=10, lr=0.1, max_groups=3))


def with_affinity(steps: Steps, num_tasks: int, every: int, lr: float) -> Steps:
    """`steps` whose state carries `extras["affinity"] = {"sum": [T, T], "count": int32}`."""

    def init() -> TrainState:
        zero = {
            "sum": jnp.zeros((num_tasks, num_tasks), jnp.float32),
            "count": jnp.zeros((), jnp.int32),
        }
        return steps.init().with_extras(affinity=zero)

    def train_step(state: TrainState, batch):
        acc = state.extras["affinity"]
        objective = steps.objective(state.params, state.model_state, batch, True)
        due = state.step % every == 0
        z = jax.lax.cond(
            due,
            lambda: affinity.lookahead_affinity(objective, lr).astype(jnp.float32),
            lambda: jnp.zeros((num_tasks, num_tasks), jnp.float32),
        )
        new_state, metrics = steps.train_step(state, batch)
        summed = {"sum": acc["sum"] + z, "count": acc["count"] + due}
        return new_state.with_extras(affinity=summed), metrics

    return Steps(init, train_step, steps.eval_step, steps.objective)


def train(config: ml_collections.ConfigDict, workdir: str) -> Result:
    """The supervised run of `config`, plus `<workdir>/affinity/affinity.{npy,json,png}`."""
    options = config.get("affinity") or default_config()
    every, lr = int(options.every), float(options.lr)
    if every < 1 or lr <= 0:
        raise ConfigError(
            f"affinity.every must be >= 1 and affinity.lr > 0, got every={every}, lr={lr}."
        )
    supervised.require_mixed(config)
    parts = supervised.parts(config)
    steps = with_affinity(parts.steps(), len(parts.tasks), every, lr)
    result = run(supervised.experiment(parts, steps), workdir)
    if result.stopped:  # the accumulator is in the checkpoint
        return result
    acc = jax.device_get(result.state.extras["affinity"])
    mean = acc["sum"] / max(int(acc["count"]), 1)
    if jax.process_index() == 0:
        names = [t.name for t in parts.tasks]
        affinity.write_report(
            mean, names, os.path.join(workdir, "affinity"), int(options.max_groups)
        )
    return result
