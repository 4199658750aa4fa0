"""The meta-learning loop: `train_and_evaluate(config, workdir)`.

Order of work, as in the multi-task loop, so that bad input fails fast: every config field is
checked, then the episode family is loaded and asked whether its splits can supply the
requested episodes, and only then is anything built or compiled. A workdir that already holds
checkpoints is resumed from the newest one; SIGTERM saves and exits 0.

The meta-batch is split over the `data` axis of the mesh with `shard_map`: each device adapts
to its share of the episodes and the meta-gradients are averaged with `pmean`. Episodes of
step s depend only on (seed, s), so a resumed run sees the same episodes as an uninterrupted
one. At the end, the learner is scored on `eval.episodes` meta-test episodes for every
(ways, shots) in `eval`, after each inner step, and the curves go to metrics.jsonl,
results.json and adaptation.png.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.sharding import PartitionSpec as P

from mtl import checkpoint, optim, parallel, preemption
from mtl.errors import ConfigError
from mtl.logs import MetricsWriter, Progress
from mtl.meta import evaluate, families, methods
from mtl.meta import model as mm
from mtl.meta.joint import train_joint
from mtl.models import TRUNKS
from mtl.train.multitask_step import all_finite

# Config fields that define what the checkpoints in a workdir hold.
MODEL_KEYS = ("model", "meta", "optimizer")
PyTree = Any


@dataclasses.dataclass(frozen=True)
class Setting:
    """One evaluation setting: `ways`-way `shots`-shot with `queries` queries per class."""

    ways: int
    shots: int
    queries: int

    def name(self, kind: str) -> str:
        return evaluate.setting_name(self.ways, self.shots, kind)


def eval_settings(config: ml_collections.ConfigDict, kind: str) -> list[Setting]:
    """Every (ways, shots) of `config.eval`; empty ways / shots mean the training ones."""
    ways = tuple(config.eval.ways) or (int(config.meta.ways),)
    shots = tuple(config.eval.shots) or (int(config.meta.shots),)
    if kind == "regression":
        ways = (1,)
    queries = int(config.eval.queries)
    return [Setting(int(w), int(s), queries) for w, s in itertools.product(ways, shots)]


def validate(config: ml_collections.ConfigDict) -> str:
    """Checks every name and option in the config (no data, no compilation); returns the kind."""
    name, _ = families.check_config(config.data)
    kind = "regression" if name == "sinusoid" else "classification"
    trunk = config.model.trunk
    TRUNKS.get(trunk, field="model.trunk")
    TRUNKS.options_from(trunk, config.model.get(trunk), field=f"model.{trunk}")
    methods.check_method(config.meta, kind, config.model.get("head_hidden", ()))
    optim.make_optimizer(config.optimizer, config.num_steps)
    for field in ("num_steps", "log_every"):
        if int(config[field]) < 1:
            raise ConfigError(f"config.{field} must be >= 1, got {config[field]}.")
    for field in ("episodes", "batch"):
        if int(config.eval[field]) < 1:
            raise ConfigError(f"config.eval.{field} must be >= 1, got {config.eval[field]}.")
    if kind == "regression" and config.meta.ways != 1:
        raise ConfigError(
            f"Regression tasks have no classes: set meta.ways=1 (got {config.meta.ways})."
        )
    if config.get("baseline", {}).get("joint") and kind != "regression":
        raise ConfigError(
            "baseline.joint (a model pretrained on all tasks pooled) needs regression tasks: "
            "classification episodes permute their labels, so pooling them teaches nothing."
        )
    return kind


def check_family(config, family, kind: str) -> list[Setting]:
    """Asks the family whether each split can supply the configured episodes."""
    m = config.meta
    family.check("train", int(m.ways), int(m.shots), int(m.queries))
    family.check("val", int(m.ways), int(m.shots), int(m.queries))
    settings = eval_settings(config, kind)
    for s in settings:
        family.check("test", s.ways, s.shots, s.queries)
        if (
            kind == "classification"
            and config.meta.method != "protonets"
            and config.meta.head_init == "learned"
            and s.ways != m.ways
        ):
            raise ConfigError(
                f"eval.ways includes {s.ways}, but the head is meta-learned for meta.ways={m.ways}"
                f" classes. Evaluate with {m.ways} ways, or train a head that is built per "
                "episode: --config.meta.head_init=zero or proto (or use ProtoNets)."
            )
    return settings


def make_train_step(learner, optimizer, mesh, ways: int):
    """`(state, batch) -> (state, metrics)`, the meta-batch split over the `data` axis."""

    def local(meta, model_state, batch, step):
        # Each device differentiates its own copy of the (replicated) meta-parameters, so its
        # gradient is that of its share of the episodes; pmean makes the global mean.
        # (Differentiating the replicated value itself would make JAX psum the gradients.)
        meta, model_state = jax.lax.pcast((meta, model_state), "data", to="varying")
        grads, aux = learner.meta_grads(meta, model_state, batch, ways=ways, step=step)
        return jax.lax.pmean((grads, aux), "data")

    sharded = jax.shard_map(
        local, mesh=mesh, in_specs=(P(), P(), P("data"), P()), out_specs=(P(), P())
    )

    def train_step(state, batch):
        grads, aux = sharded(state["meta"], state["model_state"], batch, state["step"])
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["meta"])
        meta = optax.apply_updates(state["meta"], updates)
        finite = jnp.logical_and(jnp.isfinite(aux["metrics"]["loss"]), all_finite(updates))
        bad = jnp.logical_and(state["nonfinite"] < 0, ~finite)
        new_state = {
            "step": state["step"] + 1,
            "meta": meta,
            "model_state": aux["state"],
            "opt_state": opt_state,
            "nonfinite": jnp.where(bad, state["step"] + 1, state["nonfinite"]),
        }
        return new_state, aux["metrics"]

    return train_step


def make_curve_step(learner, mesh, ways: int, steps: int):
    """`(meta, model_state, batch) -> [tasks, steps + 1]` query metrics.

    Each device adapts to its share of the tasks; the curves come back replicated (gathered
    over `data`), so every process can read all of them, as a multi-host run needs.
    """

    def local(meta, model_state, batch):
        curve = lambda ep: learner.curve(meta, model_state, ep, ways=ways, steps=steps)
        return jax.vmap(curve)(batch)

    sharded = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(), P("data")), out_specs=P("data"))
    return jax.jit(sharded, out_shardings=parallel.replicated(mesh))


def make_scorer(family, eval_config: ml_collections.ConfigDict, sharding) -> Callable:
    """`score(curve_step, state, split, setting, episodes)`: per-episode curves
    [episodes, steps + 1] of one setting on `split`, with the run's evaluation batch and seed."""
    batch, seed = int(eval_config.batch), int(eval_config.seed)
    rows = parallel.process_rows(batch, sharding)

    def score(curve_step, state, split: str, setting: Setting, episodes: int) -> np.ndarray:
        def sample(index):
            eps = family.sample(
                split,
                seed,
                index,
                batch=batch,
                ways=setting.ways,
                shots=setting.shots,
                queries=setting.queries,
            )
            local = jax.tree_util.tree_map(lambda a: a[rows], eps)
            return parallel.to_global(local, sharding, batch)

        step = lambda b: jax.device_get(curve_step(state["meta"], state["model_state"], b))
        return evaluate.episode_curves(step, sample, int(episodes), batch)

    return score


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Meta-trains (or resumes) the configured learner and returns its test results."""
    kind = validate(config)
    family = families.load(config.data)
    settings = check_family(config, family, kind)
    mesh = parallel.make_mesh(config.get("mesh"))
    parallel.check_batch_size(config.meta.meta_batch, mesh, field="meta.meta_batch")
    parallel.check_batch_size(config.eval.batch, mesh, field="eval.batch")
    checkpoint.check_config(workdir, config, MODEL_KEYS)

    m = config.meta
    model, params, model_state = mm.build(
        config.model, kind, methods.num_outputs(m, kind), family.input_shape, config.seed
    )
    learner = methods.build(m, model, params, model_state)
    optimizer = optim.make_optimizer(config.optimizer, config.num_steps)

    def init():
        meta, mstate = learner.init(params, model_state)
        return {
            "step": jnp.zeros((), jnp.int32),
            "meta": meta,
            "model_state": mstate,
            "opt_state": optimizer.init(meta),
            "nonfinite": jnp.int32(-1),  # first step with a non-finite loss or update
        }

    replicated, data_sharding = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    score = make_scorer(family, config.eval, data_sharding)
    train_step = jax.jit(
        make_train_step(learner, optimizer, mesh, int(m.ways)),
        in_shardings=(replicated, data_sharding),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
    )
    manager = checkpoint.make_manager(
        os.path.join(workdir, "checkpoints"),
        every=config.checkpoint.every,
        keep=config.checkpoint.keep,
    )
    state = jax.jit(init, out_shardings=replicated)()
    try:
        restored = checkpoint.restore_latest(manager, state)
    except BaseException:
        manager.close()  # a refused or failed restore still ends Orbax's background threads
        raise
    if restored is not None:
        state = restored
        logging.info("Resumed from %s at step %d.", manager.directory, int(state["step"]))
    checkpoint.record_config(workdir, config)  # only now: a refused restore leaves no trace

    writer = MetricsWriter(workdir)
    step = int(state["step"])
    progress = Progress(config.num_steps, step)
    preemption.install_sigterm_handler()
    rows = parallel.process_rows(m.meta_batch, data_sharding)
    metric_name = "accuracy" if kind == "classification" else "mse"
    val_every = int(config.eval.get("val_every", 0) or 0)
    val_curve = None
    try:
        while step < config.num_steps:
            episodes = family.sample(
                "train",
                config.seed,
                step,
                batch=m.meta_batch,
                ways=m.ways,
                shots=m.shots,
                queries=m.queries,
            )
            local = jax.tree_util.tree_map(lambda a: a[rows], episodes)
            state, metrics = train_step(
                state, parallel.to_global(local, data_sharding, m.meta_batch)
            )
            step += 1
            stop = preemption.should_stop(step)  # once per step, the same on every process
            log_due = step % config.log_every == 0 or step == config.num_steps
            save_due = manager.should_save(step) or stop
            if log_due or save_due:
                _check_finite(int(jax.device_get(state["nonfinite"])), manager.directory)
            if log_due:
                values = {k: float(v) for k, v in jax.device_get(metrics).items()}
                rate = progress.rate(step)
                scalars = {
                    "train/query_loss": values["loss"],
                    f"train/query_{metric_name}": values["metric"],
                    "steps_per_sec": rate,
                }
                if "support_loss" in values:
                    scalars["train/support_loss"] = values["support_loss"]
                if val_every and step % val_every == 0:
                    val_curve = val_curve or make_curve_step(
                        learner, mesh, int(m.ways), int(m.inner_steps)
                    )
                    training_setting = Setting(int(m.ways), int(m.shots), int(m.queries))
                    val = score(val_curve, state, "val", training_setting, config.eval.val_episodes)
                    scalars[f"val/{metric_name}"] = float(val[:, -1].mean())
                writer.write(step, scalars)
                shown = {"query": values["loss"], metric_name: values["metric"]}
                if f"val/{metric_name}" in scalars:
                    shown[f"val_{metric_name}"] = scalars[f"val/{metric_name}"]
                progress.log(progress.line(step, rate, shown))
            if save_due:
                checkpoint.save(manager, step, state, force=stop)
            if stop:
                manager.wait_until_finished()
                logging.info("Stop requested: saved step %d in %s; exiting.", step, workdir)
                return {}
        checkpoint.save(manager, step, state, force=True)

        results = {"step": step, "method": m.method, "metric": metric_name, "test": {}}
        curves = {}
        for s in settings:
            curve_step = make_curve_step(learner, mesh, s.ways, int(config.eval.inner_steps))
            per_episode = score(curve_step, state, "test", s, config.eval.episodes)
            results["test"][s.name(kind)] = evaluate.summarize(per_episode)
            curves[f"{m.method} {s.name(kind)}"] = results["test"][s.name(kind)]
        if config.get("baseline", {}).get("joint"):
            results["baseline"] = _joint_baseline(
                config, model, params, model_state, family, settings, mesh, score, kind
            )
            for name, summary in results["baseline"].items():
                curves[f"pretrained {name}"] = summary
        _report(results, curves, workdir, writer, step, kind)
        return results
    finally:
        manager.wait_until_finished()
        manager.close()
        writer.close()


def _joint_baseline(config, model, params, model_state, family, settings, mesh, score, kind):
    """The pretrained-on-all-tasks model, fine-tuned like MAML; its test curves by setting."""
    b, m = config.baseline, config.meta
    sample = lambda i: family.sample(
        "train",
        config.seed + 1,
        i,
        batch=m.meta_batch,
        ways=m.ways,
        shots=m.shots,
        queries=m.queries,
    )
    logging.info("Training the joint baseline for %d steps.", b.steps)
    joint = train_joint(
        model, params, model_state, sample, steps=int(b.steps), learning_rate=float(b.learning_rate)
    )
    # The paper tuned the baseline's fine-tuning step size; so do we, on meta-val tasks.
    best_lr, best = None, np.inf
    for lr in tuple(b.finetune_lrs):
        state, curve_step, tuned = _fine_tuner(config, model, params, model_state, joint, lr, mesh)
        s = settings[-1]
        val = score(curve_step(s), state, "val", s, config.eval.val_episodes)
        val_mse = float(np.nanmean(np.where(np.isfinite(val[:, -1]), val[:, -1], np.inf)))
        logging.info("Joint baseline: fine-tuning lr %g gives val MSE %.4f.", lr, val_mse)
        if val_mse < best:
            best_lr, best = lr, val_mse
    logging.info("Joint baseline: fine-tuning with lr %g (best on meta-val).", best_lr)
    state, curve_step, _ = _fine_tuner(config, model, params, model_state, joint, best_lr, mesh)
    out = {}
    for s in settings:
        per_episode = score(curve_step(s), state, "test", s, config.eval.episodes)
        out[s.name(kind)] = evaluate.summarize(per_episode) | {"finetune_lr": best_lr}
    return out


def _fine_tuner(config, model, params, model_state, joint_params, lr, mesh):
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
    tuned = methods.build(options, model, params, model_state)
    meta, mstate = tuned.init(joint_params, model_state)
    steps = int(config.eval.inner_steps)
    curve_step = lambda s: make_curve_step(tuned, mesh, s.ways, steps)
    return {"meta": meta, "model_state": mstate}, curve_step, tuned


def _check_finite(first_bad: int, checkpoint_dir: str) -> None:
    if first_bad < 0:
        return
    raise FloatingPointError(
        f"Non-finite meta-loss or update at step {first_bad}. Stopped without saving it; the "
        f"newest good checkpoint in {checkpoint_dir} is kept. Try a lower meta.inner_lr or "
        "optimizer.learning_rate, or gradient clipping (--config.optimizer.grad_clip_norm)."
    )


def _report(results: dict, curves: dict, workdir: str, writer, step: int, kind: str) -> None:
    """Logs the test table, writes metrics, results.json and the adaptation-curve PNG."""
    metric = results["metric"]
    scale = 100.0 if metric == "accuracy" else 1.0
    unit = "%" if metric == "accuracy" else ""
    lines = [f"Test {metric} (mean +- 95% CI over episodes) after 0..n inner steps:"]
    scalars = {}
    for label, c in curves.items():
        final = f"{c['mean'][-1] * scale:.2f}{unit} +- {c['ci95'][-1] * scale:.2f}{unit}"
        curve = " ".join(f"{v * scale:.3g}" for v in c["mean"])
        lines.append(f"  {label:<28s} final {final}  (curve: {curve}; n={c['episodes']})")
        key = label.replace(" ", "/")
        for i, (mean, ci) in enumerate(zip(c["mean"], c["ci95"], strict=True)):
            scalars[f"test/{metric}/{key}/step_{i}"] = mean
            scalars[f"test/{metric}_ci95/{key}/step_{i}"] = ci
    lines += _comparison(results)
    logging.info("\n".join(lines))
    writer.write(step, scalars)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump(results, f, indent=2)
        evaluate.plot_curves(
            curves,
            os.path.join(workdir, "adaptation.png"),
            ylabel=f"query {metric}",
            title=f"{results['method']}: meta-test {metric} after adaptation",
        )


def _comparison(results: dict) -> list[str]:
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


def load_state(workdir: str) -> dict:
    """The newest checkpoint of a meta-learning workdir as host arrays (no template needed)."""
    return checkpoint.read_on_host(os.path.join(workdir, "checkpoints"))
