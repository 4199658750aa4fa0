"""A multi-task run that also measures the lookahead inter-task affinity (`trainer="affinity"`).

It is the multi-task loop (`mtl.train.multitask`) with a train step that, every
`config.affinity.every` steps, computes `mtl.transfer.affinity.lookahead_affinity` on the batch
at the current parameters (before the step) and adds it to a running sum kept in the train
state, so it is checkpointed and a resumed run keeps accumulating. At the end the mean matrix,
the suggested groupings and a heatmap are written to `<workdir>/affinity/`.

    python -m launch.train --config=configs/omniglot_affinity.py --workdir=/tmp/affinity
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections

from mtl.errors import ConfigError
from mtl.train import multitask
from mtl.train.multitask_step import Steps, make_steps
from mtl.transfer import affinity


def default_config() -> ml_collections.ConfigDict:
    """`every`: steps between measurements; `lr`: the SGD lookahead step; `max_groups`."""
    return ml_collections.ConfigDict(dict(every=10, lr=0.1, max_groups=3))


def with_affinity(steps: Steps, num_tasks: int, every: int, lr: float) -> Steps:
    """`steps` whose state carries `affinity = {"sum": [T, T], "count": int32}`."""

    def init():
        state = steps.init()
        state["affinity"] = {
            "sum": jnp.zeros((num_tasks, num_tasks), jnp.float32),
            "count": jnp.zeros((), jnp.int32),
        }
        return state

    def train_step(state, batch):
        state = dict(state)
        acc = state.pop("affinity")
        objective = steps.objective(state["params"], state["model_state"], batch, True)
        due = state["step"] % every == 0
        z = jax.lax.cond(
            due,
            lambda: affinity.lookahead_affinity(objective, lr).astype(jnp.float32),
            lambda: jnp.zeros((num_tasks, num_tasks), jnp.float32),
        )
        new_state, metrics = steps.train_step(state, batch)
        new_state["affinity"] = {"sum": acc["sum"] + z, "count": acc["count"] + due}
        return new_state, metrics

    return Steps(init, train_step, steps.eval_step, steps.objective)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, dict]:
    """The multi-task run of `config`, plus `<workdir>/affinity/affinity.{npy,json,png}`."""
    options = config.get("affinity") or default_config()
    every, lr = int(options.every), float(options.lr)
    if every < 1 or lr <= 0:
        raise ConfigError(
            f"affinity.every must be >= 1 and affinity.lr > 0, got every={every}, lr={lr}."
        )
    names = sorted(config.tasks)  # the order of `tasks_from_config`

    def steps_fn(model, tasks, optimizer, weighting, seed):
        steps = make_steps(model, tasks, optimizer, weighting, seed)
        return with_affinity(steps, len(tasks), every, lr)

    results = multitask.train_and_evaluate(config, workdir, steps_fn=steps_fn)
    if not results:  # stopped early (preemption): the accumulator is in the checkpoint
        return results
    acc = multitask.final_state(workdir)["affinity"]
    mean = acc["sum"] / max(int(acc["count"]), 1)
    if jax.process_index() == 0:
        affinity.write_report(
            mean, names, os.path.join(workdir, "affinity"), int(options.max_groups)
        )
    return results
