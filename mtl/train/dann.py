"""Domain-adversarial training (`trainer="dann"`; Ganin & Lempitsky, ICML 2015).

`config.dann.source` and `config.dann.target` name two label fields of the data set. The
source's examples are labelled and train its head (`config.tasks[source]`); the target's are
used without their labels. A `domain` task (head `domain_adversarial`: 2 classes, 0 source,
1 target) reads the trunk's representation through a gradient-reversal layer scaled by
`config.dann.scale`, so the trunk learns features the domain classifier cannot separate.
`scale=0` trains the very same model on the very same batches with no adversarial gradient
into the trunk: the source-only baseline.

The target keeps at most as many training examples as the source (a seeded subset), so that
batches hold both domains about equally. Each phase of the loop is the multi-task loop, or the
fine-tuning loop when the config has a `finetune` section (a BERT trunk from a checkpoint).

At the end the source head is scored on the source's and on the target's test examples (the
only place the target's labels are read); `<workdir>/dann.json` holds both and the domain
classifier's test accuracy (near 50% once the features no longer tell the domains apart).

    python -m launch.train --config=configs/senteval_dann.py:mr,sst2 --workdir=/tmp/dann \
        --config.init.checkpoint=/tmp/minilm --config.data.data_dir=../shared/data/senteval
"""

from __future__ import annotations

import copy
import json
import os

import jax
import ml_collections
import numpy as np

from mtl.data import arrays, sources
from mtl.errors import ConfigError
from mtl.tasks import tasks_from_config
from mtl.train import loop, multitask, rebuild
from mtl.train.multitask_step import make_steps

DOMAIN = "domain"


def default_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(source="", target="", scale=0.1))


def check(config: ml_collections.ConfigDict) -> tuple[str, str, float]:
    """`(source, target, scale)`, or one `ConfigError` naming the field to fix."""
    source, target, scale = config.dann.source, config.dann.target, float(config.dann.scale)
    if not source or not target or source == target:
        raise ConfigError(
            "config.dann.source and config.dann.target must name two different label fields of "
            f"the data set, got {source!r} and {target!r}."
        )
    if source not in config.tasks:
        raise ConfigError(
            f"config.dann.source={source!r} is not a task of config.tasks "
            f"({', '.join(config.tasks)}): the source task's head is the one trained."
        )
    if DOMAIN in config.tasks or target in config.tasks:
        raise ConfigError(
            f"config.tasks must not hold {DOMAIN!r} or the target {target!r}: the trainer adds "
            "the domain classifier, and the target's labels are never trained on."
        )
    if scale < 0:
        raise ConfigError(f"config.dann.scale must be >= 0 (0: source only), got {scale}.")
    return source, target, scale


def with_domains(
    data: arrays.ArrayDataset, source: str, target: str, seed: int | None = None
) -> arrays.ArrayDataset:
    """The source's and target's examples with a domain label each (0 source, 1 target); the
    target's class labels are dropped. With `seed`, a target larger than the source is cut to
    a seeded subset of the source's size (training); without, all are kept (testing)."""
    is_source = np.asarray(data["masks"][source], bool)
    is_target = np.asarray(data["masks"][target], bool) & ~is_source
    target_rows = np.flatnonzero(is_target)
    if seed is not None and len(target_rows) > is_source.sum():
        target_rows = np.random.default_rng(seed).permutation(target_rows)[: is_source.sum()]
    rows = np.sort(np.concatenate([np.flatnonzero(is_source), target_rows]))
    labelled = {
        "inputs": data["inputs"],
        "labels": {source: data["labels"][source], DOMAIN: is_target.astype(np.int32)},
        "masks": {source: is_source, DOMAIN: np.ones_like(is_source)},
    }
    return arrays.take(labelled, rows)


def target_as_source(data: arrays.ArrayDataset, source: str, target: str):
    """The target's test examples with their labels under the source's field, to score the
    source head on them."""
    rows = np.flatnonzero(np.asarray(data["masks"][target], bool))
    relabelled = {
        "inputs": data["inputs"],
        "labels": {source: data["labels"][target]},
        "masks": {source: np.ones(len(data["masks"][target]), bool)},
    }
    return arrays.take(relabelled, rows)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, dict]:
    source, target, scale = check(config)
    run_config = copy.deepcopy(config)
    run_config.tasks[DOMAIN] = dict(head="domain_adversarial", num_outputs=2, label=DOMAIN)
    run_loop = rebuild.loop_module(run_config)
    run_loop.validate(run_config)  # names, options, checkpoint (and the text tokenizer)
    # The target is loaded as a task with the source's classes, so its labels are checked to
    # fit the source head before anything trains.
    spec = dict(config.tasks[source]) | {"label": target}
    both = tasks_from_config({source: config.tasks[source], target: spec})
    data = multitask.load_data(run_config, both)
    domains = sources.MultiTaskData(
        with_domains(data.train, source, target, seed=config.seed),
        with_domains(data.test, source, target),
    )

    def steps_fn(model, tasks, optimizer, weighting, seed):
        model.heads[DOMAIN].reversal_scale = scale  # static: compiled into the step
        return make_steps(model, tasks, optimizer, weighting, seed)

    results = run_loop.train_and_evaluate(run_config, workdir, steps_fn=steps_fn, data=domains)
    if not results:  # preempted: the same command resumes
        return results

    # The source head on the target's test examples.
    state = loop.final_state(workdir)
    state = {"params": state["params"], "model_state": state["model_state"]}
    (source_task,) = [t for t in tasks_from_config(run_config.tasks) if t.name == source]
    target_test = target_as_source(data.test, source, target)
    scored = rebuild.evaluate(run_config, [source_task], state, target_test)
    results = results | {f"{target} (by the {source} head)": scored[source]}
    if jax.process_index() == 0:
        report = {
            "source": source,
            "target": target,
            "scale": scale,
            "source_test": results[source]["accuracy"],
            "target_test": scored[source]["accuracy"],
            "domain_test": results[DOMAIN]["accuracy"],
        }
        with open(os.path.join(workdir, "dann.json"), "w") as f:
            json.dump(report, f, indent=2)
    return results
