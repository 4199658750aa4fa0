"""Tasks learned one after another, optionally with EWC (`trainer="sequential"`).

`config.sequential.phases` lists the phases, each a comma-separated group of the config's
tasks. Phase k is an ordinary run on its group (in `<workdir>/phase<k>`, resumable like any
run) whose trunk starts where phase k-1 ended; its heads are new. The run is a multi-task run,
or a fine-tuning run when the config has a `finetune` section (a BERT trunk from
`init.checkpoint` in phase 0, with the configured strategy in every phase). With
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
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mtl import checkpoint
from mtl.data import arrays, sources
from mtl.errors import ConfigError
from mtl.models.functional import PureModule
from mtl.tasks import tasks_from_config
from mtl.train import loop, multitask, rebuild
from mtl.train.multitask_step import Steps, make_steps
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


def _fisher(config, phase_tasks, params, model_state, data, rng):
    """Diagonal Fisher of the trunk for each task of a phase on its own examples, summed."""
    model = rebuild.model(config, phase_tasks, arrays.input_shape(data))
    trunk, _, _ = PureModule.split(model.trunk)
    prepare = rebuild.prepare(config)
    size, limit = int(config.sequential.fisher_batch), int(config.sequential.fisher_examples)
    total = None
    for task in phase_tasks:
        head = PureModule.split(model.heads[task.name])[0]
        head_params = params["heads"][task.name]

        def logits_fn(trunk_params, x, head=head, head_params=head_params):
            z, _ = trunk.apply(trunk_params, model_state["trunk"], x, train=False)
            return head.apply(head_params, {}, z)[0]

        own = np.flatnonzero(np.asarray(data["masks"][task.label]))
        if limit:
            own = np.sort(np.random.default_rng(config.seed).permutation(own)[:limit])
        batches = (
            (jax.tree.map(jnp.asarray, b["inputs"]), jnp.asarray(b["labels"][task.label]))
            for b in (
                prepare(arrays.take(data, own[i : i + size])) for i in range(0, len(own), size)
            )
        )
        f = ewc.fisher_diagonal(logits_fn, params["trunk"], batches, rng)
        total = f if total is None else jax.tree.map(jnp.add, total, f)
    return total


def _saved_fisher(config, phase_dir, phase_tasks, state, data, k):
    """The Fisher of phase k's tasks, computed once and kept in the phase's directory (named by
    the options it depends on), so that a resumed or repeated run does not recompute it."""
    options = config.sequential
    path = os.path.join(phase_dir, f"fisher_{options.fisher_examples}x{options.fisher_batch}")
    like = state["params"]["trunk"]
    if os.path.isdir(path):
        return checkpoint.read_subtree(path, (), like)
    fisher = _fisher(
        config, phase_tasks, state["params"], state["model_state"], data,
        jax.random.key(config.seed + k),
    )  # fmt: skip
    checkpoint.write_tree(path, jax.device_get(fisher))
    return fisher


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, dict]:
    phases = _phases(config)
    strength = float(config.sequential.ewc_strength)
    if strength < 0:
        raise ConfigError(f"config.sequential.ewc_strength must be >= 0, got {strength}.")
    if int(config.sequential.fisher_batch) < 1 or int(config.sequential.fisher_examples) < 0:
        raise ConfigError(
            "config.sequential.fisher_batch must be >= 1 and fisher_examples >= 0 (0: all), got "
            f"{config.sequential.fisher_batch} and {config.sequential.fisher_examples}."
        )
    # Names, options and the init checkpoint are checked before anything trains (fine-tuning
    # also resolves the tokenizer to the checkpoint's here).
    run_loop = rebuild.loop_module(config)
    run_loop.validate(config)
    all_tasks = tasks_from_config(config.tasks)
    data = multitask.load_data(config, all_tasks)  # once; each phase gets its tasks' examples
    trunk_start = anchor = fisher = None
    heads, per_phase = {}, []
    for k, names in enumerate(phases):
        phase_config = copy.deepcopy(config)
        phase_config.tasks = ml_collections.ConfigDict({n: config.tasks[n] for n in names})
        phase_tasks = tasks_from_config(phase_config.tasks)

        def steps_fn(
            model, tasks, optimizer, weighting, seed, start=trunk_start, anchor=anchor,
            fisher=fisher,
        ):  # fmt: skip
            if fisher is not None and strength > 0:
                weighting = ewc.with_ewc(weighting, anchor, fisher, strength)
            steps = make_steps(model, tasks, optimizer, weighting, seed)
            if start is None:
                return steps

            def init():  # the trunk (and its statistics) where the previous phase ended
                state = steps.init()
                state["params"]["trunk"], state["model_state"] = start
                state["opt_state"] = optimizer.init(state["params"])
                return state

            return Steps(init, steps.train_step, steps.eval_step, steps.objective)

        fields = sorted({t.label for t in phase_tasks})
        phase_data = sources.MultiTaskData(*(arrays.select_fields(ds, fields) for ds in data))
        results = run_loop.train_and_evaluate(
            phase_config, os.path.join(workdir, f"phase{k}"), steps_fn=steps_fn, data=phase_data
        )
        if not results:  # preempted: the same command resumes this phase
            return results
        per_phase.append(results)
        state = loop.final_state(os.path.join(workdir, f"phase{k}"))
        heads.update(state["params"]["heads"])
        trunk_start = (state["params"]["trunk"], state["model_state"])
        anchor = state["params"]["trunk"]
        if strength > 0 and k + 1 < len(phases):  # a later phase will use it
            f = _saved_fisher(
                config, os.path.join(workdir, f"phase{k}"), phase_tasks, state, data.train, k
            )
            fisher = f if fisher is None else jax.tree.map(jnp.add, fisher, f)

    # Every task with the final trunk and its own head.
    state = {"params": {"trunk": trunk_start[0], "heads": heads}, "model_state": trunk_start[1]}
    final = rebuild.evaluate(config, all_tasks, state, data.test)
    report = {"final": final, "after_phase": per_phase, "phases": phases, "ewc": strength}
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump(report, f, indent=2, default=float)
    return final
