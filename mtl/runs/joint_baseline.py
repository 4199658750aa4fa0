"""The joint baseline of meta-learning runs (`baseline.joint`): a run of its own.

A model pretrained on all training tasks pooled (`mtl.meta.joint.pooled_loss`, Adam at
`baseline.learning_rate` for `baseline.steps` steps, in `<workdir>/joint`, resumable like any
run), then fine-tuned on each test task like MAML with the step size chosen on meta-val tasks
among `baseline.finetune_lrs`, as the paper tuned it.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
from absl import logging

from mtl import parallel
from mtl.errors import ConfigError
from mtl.meta import curves, methods
from mtl.meta.joint import pooled_loss
from mtl.train.experiment import Experiment
from mtl.train.loop import run
from mtl.train.state import TrainState

GUARDED = ("model", "meta", "baseline")


def enabled(config: ml_collections.ConfigDict) -> bool:
    return bool((config.get("baseline") or {}).get("joint"))


def check(config: ml_collections.ConfigDict, kind: str) -> None:
    if enabled(config) and kind != "regression":
        raise ConfigError(
            "baseline.joint (a model pretrained on all tasks pooled) needs regression tasks: "
            "classification episodes permute their labels, so pooling them teaches nothing."
        )


def experiment(p) -> Experiment:
    """The pooled-training Experiment of meta pieces `p` (`mtl.runs.meta.Pieces`)."""
    from mtl.runs.meta import EpisodeBatches
    from mtl.runs.meta import experiment as meta_experiment

    config, built, b = p.config, p.built, p.config.baseline
    joint_config = copy.deepcopy(config)
    joint_config.num_steps = int(b.steps)
    tx = optax.adam(float(b.learning_rate))
    model = built.model

    def train_step(state: TrainState, batch):
        loss, grads = jax.value_and_grad(
            lambda params: pooled_loss(model, params, state.model_state, batch)
        )(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return state.advanced(params, updates, loss, opt_state=opt_state), {"loss": loss}

    # The meta run's Experiment (mesh, episode source) with the pooled objective instead.
    return dataclasses.replace(
        meta_experiment(p),
        config=joint_config,
        init=lambda: TrainState.create(
            built.params, built.model_state, tx, seed=config.seed, losses=("pooled",)
        ),
        train_step=train_step,
        batches=EpisodeBatches.training(config, p.family, config.seed + 1),
        guarded=GUARDED,
        loss_names=("pooled",),
        progress={"pooled": "loss"},
        evaluators=(),
    )


def fine_tuner(config: ml_collections.ConfigDict, built, lr: float):
    """The joint model as a learner that fine-tunes all weights with SGD at rate `lr`."""
    options = dict(config.meta) | {
        "method": "maml",
        "inner_lr": float(lr),
        "learn_inner_lr": "none",
        "first_order": True,
        "multi_step_loss": False,
        "per_step_bn": False,
        "adapt": "all",
        "head_init": "learned",
    }
    return methods.build(options, built.model, built.params, built.model_state)


def train_and_score(p, workdir: str) -> dict[str, Any] | None:
    """Trains the joint model in `workdir` (None if a stop was requested), then its test
    curves by setting, fine-tuned at the meta-val-best rate."""
    from mtl.runs import meta_eval

    config, built = p.config, p.built
    logging.info("Training the joint baseline for %d steps.", config.baseline.steps)
    result = run(experiment(p), workdir)
    if result.stopped:
        return None
    joint = jax.device_get(result.state.params)
    score = meta_eval.make_scorer(p.family, config.eval, parallel.batch_sharding(p.mesh))
    steps = int(config.eval.inner_steps)

    def tuned_curves(lr: float, split: str, setting, episodes: int) -> np.ndarray:
        tuned = fine_tuner(config, built, lr)
        meta, mstate = tuned.init(joint, built.model_state)
        curve_step = meta_eval.make_curve_step(tuned, p.mesh, setting.ways, steps)
        return score(curve_step, meta, mstate, split, setting, episodes)

    best_lr, best = None, np.inf
    for lr in tuple(config.baseline.finetune_lrs):
        val = tuned_curves(lr, "val", p.settings[-1], config.eval.val_episodes)
        val_mse = float(np.nanmean(np.where(np.isfinite(val[:, -1]), val[:, -1], np.inf)))
        logging.info("Joint baseline: fine-tuning lr %g gives val MSE %.4f.", lr, val_mse)
        if val_mse < best:
            best_lr, best = lr, val_mse
    logging.info("Joint baseline: fine-tuning with lr %g (best on meta-val).", best_lr)
    return {
        s.name(built.kind): curves.summarize(tuned_curves(best_lr, "test", s, config.eval.episodes))
        | {"finetune_lr": best_lr}
        for s in p.settings
    }
