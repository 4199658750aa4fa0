"""Scoring a meta-learner on held-out episodes: settings, adaptation curves and the report.

A curve is the query metric after 0, 1, ..., n inner steps on one episode; `summarize` turns
per-episode curves into a mean and a 95% interval per step. The report logs the table, writes
`results.json`, the metrics and `adaptation.png`.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mtl import parallel, workdir_files
from mtl.logs import MetricsWriter
from mtl.meta import curves

PyTree = Any


@dataclasses.dataclass(frozen=True)
class Setting:
    """One evaluation setting: `ways`-way `shots`-shot with `queries` queries per class."""

    ways: int
    shots: int
    queries: int

    def name(self, kind: str) -> str:
        return curves.setting_name(self.ways, self.shots, kind)


def metric_name(kind: str) -> str:
    """The query metric of a family kind: accuracy (classification) or MSE (regression)."""
    return "accuracy" if kind == "classification" else "mse"


def settings(config: ml_collections.ConfigDict, kind: str) -> list[Setting]:
    """Every (ways, shots) of `config.eval`; empty ways / shots mean the training ones."""
    ways = tuple(config.eval.ways) or (int(config.meta.ways),)
    shots = tuple(config.eval.shots) or (int(config.meta.shots),)
    if kind == "regression":
        ways = (1,)
    queries = int(config.eval.queries)
    return [Setting(int(w), int(s), queries) for w, s in itertools.product(ways, shots)]


def episode_ways(batch: PyTree, ways: int, shots: int) -> int:
    """The number of classes of a meta-batch's episodes, read from its (static) shape: fewer
    than `ways` when they come from a task with fewer classes (`mtl.meta.task_family`).
    Regression episodes (float targets) keep `ways`."""
    y = batch["support"]["y"]
    if not jnp.issubdtype(y.dtype, jnp.integer):
        return ways
    return y.shape[-1] // shots


def make_curve_step(learner, mesh: Mesh, ways: int, steps: int, shots: int = 0) -> Callable:
    """`(meta, model_state, batch) -> [tasks, steps + 1]` query metrics.

    Each device adapts to its share of the tasks; the curves come back replicated (gathered
    over `data`), so every process can read all of them, as a multi-host run needs. With
    `shots`, episodes of fewer than `ways` classes are scored as such (`episode_ways`).
    """

    def local(meta, model_state, batch):
        n = episode_ways(batch, ways, shots) if shots else ways
        curve = lambda ep: learner.curve(meta, model_state, ep, ways=n, steps=steps)
        return jax.vmap(curve)(batch)

    # check_vma=False: each device's inner-loop gradients are its own episodes'. With it on,
    # JAX transposes the implicit broadcast of the replicated meta-parameters into a psum, so
    # every device would step with the sum of all devices' inner gradients.
    sharded = jax.shard_map(
        local, mesh=mesh, in_specs=(P(), P(), P("data")), out_specs=P("data"), check_vma=False
    )
    return jax.jit(sharded, out_shardings=parallel.replicated(mesh))


Scorer = Callable[[Callable, PyTree, PyTree, str, Setting, int], np.ndarray]


def make_scorer(family, eval_config: ml_collections.ConfigDict, sharding: NamedSharding) -> Scorer:
    """`score(curve_step, meta, model_state, split, setting, episodes)`: per-episode curves
    [episodes, steps + 1] of one setting on `split`, with the run's evaluation batch and seed."""
    batch, seed = int(eval_config.batch), int(eval_config.seed)
    rows = parallel.process_rows(batch, sharding)

    def score(curve_step, meta, model_state, split, setting, episodes) -> np.ndarray:
        def sample(index):
            eps = family.sample(
                split, seed, index, batch=batch, ways=setting.ways, shots=setting.shots,
                queries=setting.queries,
            )  # fmt: skip
            local = jax.tree_util.tree_map(lambda a: a[rows], eps)
            return parallel.to_global(local, sharding, batch)

        step = lambda b: jax.device_get(curve_step(meta, model_state, b))
        return curves.episode_curves(step, sample, int(episodes), batch)

    return score


def report(results: dict, labelled: dict, workdir: str, step: int) -> None:
    """Logs the test table, writes metrics, results.json and the adaptation-curve PNG."""
    metric = results["metric"]
    scale, unit = (100.0, "%") if metric == "accuracy" else (1.0, "")
    lines = [f"Test {metric} (mean +- 95% CI over episodes) after 0..n inner steps:"]
    scalars = {}
    for label, c in labelled.items():
        final = f"{c['mean'][-1] * scale:.2f}{unit} +- {c['ci95'][-1] * scale:.2f}{unit}"
        curve = " ".join(f"{v * scale:.3g}" for v in c["mean"])
        lines.append(f"  {label:<28s} final {final}  (curve: {curve}; n={c['episodes']})")
        key = label.replace(" ", "/")
        for i, (mean, ci) in enumerate(zip(c["mean"], c["ci95"], strict=True)):
            scalars[f"test/{metric}/{key}/step_{i}"] = mean
            scalars[f"test/{metric}_ci95/{key}/step_{i}"] = ci
    lines += comparison(results)
    logging.info("\n".join(lines))
    writer = MetricsWriter(workdir)
    writer.write(step, scalars)
    writer.close()
    if jax.process_index() == 0:
        workdir_files.write_json(os.path.join(workdir, "results.json"), results)
        curves.plot_curves(
            labelled,
            os.path.join(workdir, "adaptation.png"),
            ylabel=f"query {metric}",
            title=f"{results['method']}: meta-test {metric} after adaptation",
        )


def comparison(results: dict) -> list[str]:
    """The paper's comparison: the learner against the joint baseline after the last step."""
    if "baseline" not in results:
        return []
    lines = [f"{results['method']} against the model pretrained on all tasks (lower is better):"]
    for setting, ours in results["test"].items():
        base = results["baseline"].get(setting)
        if base is None:
            continue
        better = results["method"] if ours["mean"][-1] < base["mean"][-1] else "pretrained"
        lines.append(
            f"  {setting}: {ours['mean'][-1]:.3f} +- {ours['ci95'][-1]:.3f} against "
            f"{base['mean'][-1]:.3f} +- {base['ci95'][-1]:.3f} after {len(ours['mean']) - 1} "
            f"steps (pretrained fine-tuned at lr {base['finetune_lr']:g}): {better} is better"
        )
    return lines
