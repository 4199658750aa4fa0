"""Tasks learned one after another, optionally with EWC (`trainer="sequential"`).

`config.sequential.phases` lists the phases, each a comma-separated group of the config's
tasks. Phase k is an ordinary run on its group (in `<workdir>/phase<k>`, resumable like any
run) whose trunk starts where phase k-1 ended (its final state is passed on as a value); its
heads are new. Each phase is a supervised run (`mtl.runs.supervised`), with the fine-tuning
stage when the config has a `finetune` section (a BERT trunk from `init.checkpoint` in phase
0, with the configured strategy in every phase). With
`config.sequential.ewc_strength > 0` every phase after the first adds the EWC penalty
(`mtl.transfer.ewc.with_ewc`) around the configured weighting, with the diagonal Fisher of all
earlier phases' tasks (summed) and the trunk after the previous phase as the anchor. At the
end every task is evaluated with the final trunk and its own head, so forgetting shows as the
drop of the early tasks; `<workdir>/results.json` holds those numbers and, per phase, the
test metrics right after it.

    python -m launch.train --config=configs/omniglot_sequential.py --workdir=/tmp/seq \
        --config.data.data_dir=../shared/data/omniglot --config.sequential.ewc_strength=100

The Fisher takes one gradient per example, `fisher_batch` examples at a time, over the first
`fisher_examples` of each task's training examples in a seeded order (0: all of them); a BERT
trunk needs small batches (one 22M-parameter gradient per example). It is saved in the phase's
directory, so a resumed run (or another EWC strength started from a copy of the same phase 0)
reuses it.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mtl import checkpoint, parallel, workdir_files
from mtl.data import arrays, batches
from mtl.errors import ConfigError
from mtl.models.functional import PureModule
from mtl.runs import evaluators, supervised
from mtl.runs.supervised_step import Steps
from mtl.tasks import tasks_from_config
from mtl.train.experiment import Result
from mtl.train.loop import run
from mtl.train.state import TrainState
from mtl.transfer import ewc


def default_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(phases=(), ewc_strength=0.0, fisher_batch=256, fisher_examples=0)
    )


def _phases(config) -> list[list[str]]:
    phases = [[n for n in p.split(",") if n] for p in config.sequential.phases]
    known = set(config.tasks)
    if len(phases) < 2 or any(not p for p in phases):
        raise ConfigError(
            "config.sequential.phases needs at least two non-empty groups of task names, e.g. "
            "('Greek', 'Latin')."
        )
    unknown = sorted({n for p in phases for n in p} - known)
    if unknown:
        raise ConfigError(
            f"config.sequential.phases names unknown task(s) {', '.join(unknown)}; tasks: "
            f"{', '.join(sorted(known))}."
        )
    return phases


def _fisher(parts: supervised.Parts, params, model_state, rng):
    """Diagonal Fisher of the trunk for each task of a phase on its own examples, summed."""
    config, model, data = parts.config, parts.model, parts.data.train
    trunk, _, _ = PureModule.split(model.trunk)
    prepare = batches.trim_text(int(config.get("pad_to_multiple", 0)))
    size, limit = int(config.sequential.fisher_batch), int(config.sequential.fisher_examples)
    total = None
    for task in parts.tasks:
        head = PureModule.split(model.heads[task.name])[0]
        head_params = params["heads"][task.name]

        def logits_fn(trunk_params, x, head=head, head_params=head_params):
            z, _ = trunk.apply(trunk_params, model_state["trunk"], x, train=False)
            return head.apply(head_params, {}, z)[0]

        own = np.flatnonzero(np.asarray(data["masks"][task.label]))
        if limit:
            own = np.sort(np.random.default_rng(config.seed).permutation(own)[:limit])
        examples = (
            (jax.tree.map(jnp.asarray, b["inputs"]), jnp.asarray(b["labels"][task.label]))
            for b in (
                prepare(arrays.materialize(arrays.take(data, own[i : i + size])))
                for i in range(0, len(own), size)
            )
        )
        f = ewc.fisher_diagonal(logits_fn, params["trunk"], examples, rng)
        total = f if total is None else jax.tree.map(jnp.add, total, f)
    return total


def _saved_fisher(parts: supervised.Parts, phase_dir: str, state: TrainState, k: int):
    """The Fisher of phase k's tasks, computed once and kept in the phase's directory (named by
    the options it depends on), so that a resumed or repeated run does not recompute it."""
    options = parts.config.sequential
    path = os.path.join(phase_dir, f"fisher_{options.fisher_examples}x{options.fisher_batch}")
    like = jax.device_get(state.params["trunk"])
    if os.path.isdir(path):
        return checkpoint.read_subtree(path, (), like)
    fisher = _fisher(parts, state.params, state.model_state, jax.random.key(parts.config.seed + k))
    checkpoint.write_tree(path, jax.device_get(fisher))
    return fisher


def _check(config: ml_collections.ConfigDict) -> list[list[str]]:
    phases = _phases(config)
    if float(config.sequential.ewc_strength) < 0:
        raise ConfigError(
            f"config.sequential.ewc_strength must be >= 0, got {config.sequential.ewc_strength}."
        )
    if int(config.sequential.fisher_batch) < 1 or int(config.sequential.fisher_examples) < 0:
        raise ConfigError(
            "config.sequential.fisher_batch must be >= 1 and fisher_examples >= 0 (0: all), got "
            f"{config.sequential.fisher_batch} and {config.sequential.fisher_examples}."
        )
    supervised.require_mixed(config)
    # Names, options and the init checkpoint are checked before anything trains (fine-tuning
    # also resolves the tokenizer to the checkpoint's here).
    supervised.check(config)
    return phases


def starting_from(steps: Steps, optimizer, trunk: Any, model_state: Any) -> Steps:
    """`steps` whose fresh state has the given trunk (and its statistics)."""

    def init() -> TrainState:
        state = steps.init()
        params = {**state.params, "trunk": trunk}
        return state.replace(
            params=params, model_state=model_state, opt_state=optimizer.init(params)
        )

    return Steps(init, steps.train_step, steps.eval_step, steps.objective)


@dataclasses.dataclass
class Carried:
    """What one phase hands the next: its final trunk, statistics, heads and the EWC terms."""

    trunk: Any = None
    model_state: Any = None
    heads: dict = dataclasses.field(default_factory=dict)
    fisher: Any = None


def phase(config, k: int, names, data, carried: Carried, workdir: str):
    """Runs phase `k` on tasks `names`; returns its `Result` and its `Parts`."""
    phase_config = copy.deepcopy(config)
    phase_config.tasks = ml_collections.ConfigDict({n: config.tasks[n] for n in names})
    phase_tasks = tasks_from_config(phase_config.tasks)
    fields = sorted({t.label for t in phase_tasks})
    phase_data = data.map(lambda ds: arrays.select_fields(ds, fields))
    parts = supervised.parts(phase_config, data=phase_data)
    strength = float(config.sequential.ewc_strength)
    if carried.fisher is not None and strength > 0:
        weighting = ewc.with_ewc(parts.weighting, carried.trunk, carried.fisher, strength)
        parts = dataclasses.replace(parts, weighting=weighting)
    steps = parts.steps()
    if carried.trunk is not None:
        steps = starting_from(steps, parts.optimizer, carried.trunk, carried.model_state)
    result = run(supervised.experiment(parts, steps), os.path.join(workdir, f"phase{k}"))
    return result, parts


def train(config: ml_collections.ConfigDict, workdir: str) -> Result:
    """Trains the phases in turn; `Result.metrics["test"]` holds every task's final metrics."""
    phases = _check(config)
    all_tasks = tasks_from_config(config.tasks)
    data = supervised.load_data(config, all_tasks)  # once; each phase gets its tasks' examples
    carried, per_phase = Carried(), []
    strength = float(config.sequential.ewc_strength)
    for k, names in enumerate(phases):
        result, parts = phase(config, k, names, data, carried, workdir)
        if result.stopped:  # the same command resumes this phase
            return result
        per_phase.append(result["test"])
        state = result.state
        carried.heads.update(state.params["heads"])
        carried.trunk, carried.model_state = state.params["trunk"], state.model_state
        if strength > 0 and k + 1 < len(phases):  # a later phase will use it
            f = _saved_fisher(parts, os.path.join(workdir, f"phase{k}"), state, k)
            carried.fisher = (
                f if carried.fisher is None else jax.tree.map(jnp.add, carried.fisher, f)
            )
    final = _final_metrics(config, data, carried)
    report = {"final": final, "after_phase": per_phase, "phases": phases, "ewc": strength}
    if jax.process_index() == 0:
        workdir_files.write_json(os.path.join(workdir, "results.json"), report)
    return dataclasses.replace(result, metrics={"test": final, "sequential": report})


def _final_metrics(config, data, carried: Carried) -> dict:
    """Every task with the final trunk and its own head."""
    parts = supervised.parts(config, data=data)
    steps = parts.steps()
    state = steps.init().replace(
        params={"trunk": carried.trunk, "heads": carried.heads}, model_state=carried.model_state
    )
    mesh = parallel.make_mesh(config.get("mesh"))
    return evaluators.mean_metrics(
        jax.jit(steps.eval_step), state, batches.sorted_by_length(data.test),
        config.eval_batch_size, parallel.batch_sharding(mesh),
        batches.trim_text(int(config.get("pad_to_multiple", 0))),
    )  # fmt: skip
