"""Meta-learning: `build(config) -> Experiment`, and `train`, which adds the joint baseline.

Order of work, so that bad input fails fast: every config field is checked, then the episode
family is loaded and asked whether its splits can supply the requested episodes, and only then
is anything built or compiled.

The meta-batch is split over the `data` axis of the mesh with `shard_map`: each device adapts
to its share of the episodes and the meta-gradients are averaged with `pmean`. Episodes of
step s depend only on (seed, s). The `val` evaluator scores meta-val episodes every
`eval.val_every` steps; at the end the `meta_test` evaluator scores `eval.episodes` meta-test
episodes for every (ways, shots) in `eval` after each inner step. `train` then trains the
joint baseline (a run of its own in `<workdir>/joint`, `mtl.runs.joint_baseline`) when
`baseline.joint` is set, and writes results.json, metrics and adaptation.png.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from jax.sharding import PartitionSpec as P

from mtl import checkpoint, optim, parallel, workdir_files
from mtl.data import text
from mtl.errors import ConfigError
from mtl.meta import curves, families, methods
from mtl.meta import model as mm
from mtl.meta.learner import Learner
from mtl.models import TRUNKS, precision
from mtl.runs import finetune_stage, joint_baseline, meta_eval
from mtl.train.experiment import EvalContext, Evaluator, Experiment, Result
from mtl.train.loop import run
from mtl.train.state import TrainState, template
from mtl.transfer import restore

# Config fields that define what the checkpoints in a workdir hold.
GUARDED = ("model", "meta", "optimizer", "init")
PyTree = Any


def init_source(config: ml_collections.ConfigDict) -> restore.TrunkSource | None:
    """Where the pretrained trunk is (`init.checkpoint`), checked against the config; text
    data reads its tokenizer unless `data.tokenizer_dir` is set."""
    checkpoint_dir = config.get("init", {}).get("checkpoint")
    if not checkpoint_dir:
        return None
    text.default_tokenizer_dir(config.data, checkpoint_dir)
    source = restore.find_source(checkpoint_dir)
    keys = finetune_stage.architecture_keys(config, source)
    restore.check_architecture(config.model, source, keys)
    return source


def validate(config: ml_collections.ConfigDict) -> str:
    """Checks every name and option in the config (no data, no compilation); returns the kind."""
    init_source(config)
    families.check_config(config.data)
    kind = families.kind(config.data)
    trunk = config.model.trunk
    TRUNKS.get(trunk, field="model.trunk")
    options = TRUNKS.options_from(trunk, config.model.get(trunk), field=f"model.{trunk}")
    precision.trunk_options(trunk, options, precision.of(config))
    dropping = [k for k in ("dropout", "attention_dropout") if options.get(k)]
    if dropping:
        # Episodes are vmapped with one trunk state; dropout's RNG state cannot be shared so.
        fixes = " ".join(f"--config.model.{trunk}.{k}=0" for k in dropping)
        raise ConfigError(
            f"Meta-learning runs the trunk without dropout, but model.{trunk} sets "
            f"{', '.join(f'{k}={options[k]}' for k in dropping)}. Set {fixes}."
        )
    methods.check_method(config.meta, kind, config.model.get("head_hidden", ()))
    optim.make_optimizer(config.optimizer, config.num_steps)
    if int(config.log_every) < 1:
        raise ConfigError(f"config.log_every must be >= 1, got {config.log_every}.")
    if int(config.num_steps) < 0:
        raise ConfigError(f"config.num_steps must be >= 0, got {config.num_steps}.")
    if int(config.num_steps) > 0 and not methods.meta_trains(config.meta):
        raise ConfigError(
            f"meta.method={config.meta.method!r} is not meta-trained: it adapts the trunk "
            "(init.checkpoint) to each support set. Set --config.num_steps=0."
        )
    for field in ("episodes", "batch"):
        if int(config.eval[field]) < 1:
            raise ConfigError(f"config.eval.{field} must be >= 1, got {config.eval[field]}.")
    if kind == "regression" and config.meta.ways != 1:
        raise ConfigError(
            f"Regression tasks have no classes: set meta.ways=1 (got {config.meta.ways})."
        )
    joint_baseline.check(config, kind)
    return kind


def check_family(config, family, kind: str) -> list[meta_eval.Setting]:
    """Asks the family whether each split can supply the configured episodes."""
    m = config.meta
    family.check("train", int(m.ways), int(m.shots), int(m.queries))
    family.check("val", int(m.ways), int(m.shots), int(m.queries))
    fewest = getattr(family, "fewest_classes", None)  # tasks of their own class counts
    if fewest is not None and kind == "classification" and not methods.head_per_episode(m):
        for split in ("train", "test"):
            if family.splits[split] and fewest(split) < int(m.ways):
                raise ConfigError(
                    f"A meta-{split} task has {fewest(split)} classes, fewer than meta.ways="
                    f"{m.ways}, so its episodes have fewer ways than the head's "
                    f"{m.ways} outputs. Use a head built per episode "
                    "(--config.meta.head_init=zero or proto, or ProtoNets), or "
                    f"--config.meta.ways={fewest(split)}."
                )
    settings = meta_eval.settings(config, kind)
    for s in settings:
        family.check("test", s.ways, s.shots, s.queries)
        if kind == "classification" and s.ways != m.ways and not methods.head_per_episode(m):
            raise ConfigError(
                f"eval.ways includes {s.ways}, but the head is meta-learned for meta.ways={m.ways}"
                f" classes. Evaluate with {m.ways} ways, or train a head that is built per "
                "episode: --config.meta.head_init=zero or proto (or use ProtoNets)."
            )
    return settings


@dataclasses.dataclass(frozen=True)
class EpisodeBatches:
    """A `BatchSource` of meta-batches: `batch_size` episodes of split `split` per step."""

    family: Any
    split: str
    seed: int
    batch_size: int
    ways: int
    shots: int
    queries: int

    @classmethod
    def training(cls, config: ml_collections.ConfigDict, family, seed: int) -> EpisodeBatches:
        """Meta-batches of meta-training episodes as `config.meta` sets them."""
        m = config.meta
        return cls(
            family, "train", seed, int(m.meta_batch), int(m.ways), int(m.shots), int(m.queries)
        )

    def __call__(self, step: int, rows: slice) -> PyTree:
        episodes = self.family.sample(
            self.split, self.seed, step, batch=self.batch_size, ways=self.ways,
            shots=self.shots, queries=self.queries,
        )  # fmt: skip
        # This process's rows only, decoded here (in the prefetch threads) when lazy.
        return jax.tree_util.tree_map(lambda a: np.asarray(a[rows]), episodes)


def make_train_step(learner, optimizer, mesh, ways: int, metric: str, shots: int = 0):
    """`(state, batch) -> (state, metrics)`, the meta-batch split over the `data` axis. With
    `shots`, a meta-batch of episodes with fewer than `ways` classes (from a task that has
    fewer) is trained as such (`meta_eval.episode_ways`; one compilation per class count)."""

    def local(meta, model_state, batch, step):
        n = meta_eval.episode_ways(batch, ways, shots) if shots else ways
        # Each device differentiates its own copy of the (replicated) meta-parameters, so its
        # gradient is that of its share of the episodes; pmean makes the global mean.
        given = model_state
        grads, aux = learner.meta_grads(meta, model_state, batch, ways=n, step=step)
        # Averages over devices; state that is not a number to average (a dropout RNG key
        # of a trunk run without dropout) stays as it was given, replicated.
        aux["state"] = jax.tree.map(
            lambda new, old: new if jnp.issubdtype(new.dtype, jnp.inexact) else old,
            aux["state"],
            given,
        )
        averaged = jax.tree.map(
            lambda a: jax.lax.pmean(a, "data") if jnp.issubdtype(a.dtype, jnp.inexact) else a,
            (grads, aux),
        )
        return averaged

    # check_vma=False, as in `meta_eval.make_curve_step`: a value made inside an episode (a
    # zero head) would otherwise count as replicated, and JAX would sum its inner-loop
    # gradients over devices. The pmean above is the only cross-device reduction.
    sharded = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(P(), P(), P("data"), P()),
        out_specs=(P(), P()),
        check_vma=False,
    )

    def train_step(state: TrainState, batch: PyTree) -> tuple[TrainState, dict]:
        grads, aux = sharded(state.params, state.model_state, batch, state.step)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        meta = optax.apply_updates(state.params, updates)
        new_state = state.advanced(
            meta, updates, aux["metrics"]["loss"], opt_state=opt_state, model_state=aux["state"]
        )
        named = {"loss": "query_loss", "metric": f"query_{metric}"}
        return new_state, {named.get(k, k): v for k, v in aux["metrics"].items()}

    return train_step


@dataclasses.dataclass(frozen=True)
class Built:
    """The pieces of a meta-learning run that its evaluators and `load_learner` share."""

    kind: str
    model: mm.MetaModel
    params: PyTree
    model_state: PyTree
    learner: Any
    optimizer: optax.GradientTransformation

    def init(self, seed: int) -> TrainState:
        meta, mstate = self.learner.init(self.params, self.model_state)
        return TrainState.create(meta, mstate, self.optimizer, seed=seed, losses=("meta-loss",))


def build_learner(config: ml_collections.ConfigDict, kind: str, input_shape) -> Built:
    """The model, the learner and the optimizer of a meta-learning config (no data read)."""
    m = config.meta
    model, params, model_state = mm.build(
        config.model,
        kind,
        methods.num_outputs(m, kind),
        input_shape,
        config.seed,
        precision.of(config),
        lora=methods.lora(m),
    )
    learner = methods.build(m, model, params, model_state)
    optimizer = optim.make_optimizer(config.optimizer, config.num_steps)
    return Built(kind, model, params, model_state, learner, optimizer)


@dataclasses.dataclass(frozen=True)
class Pieces:
    """A checked meta-learning config's family, settings, mesh and learner."""

    config: ml_collections.ConfigDict
    family: Any
    settings: list[meta_eval.Setting]
    mesh: Any
    built: Built
    source: restore.TrunkSource | None = None


def pieces(config: ml_collections.ConfigDict) -> Pieces:
    """Checks `config`, loads the episode family and builds the learner."""
    kind = validate(config)
    family = families.load(config.data)
    settings = check_family(config, family, kind)
    mesh = parallel.make_mesh(config.get("mesh"))
    parallel.check_batch_size(config.meta.meta_batch, mesh, field="meta.meta_batch")
    parallel.check_batch_size(config.eval.batch, mesh, field="eval.batch")
    built = build_learner(config, kind, family.input_shape)
    return Pieces(config, family, settings, mesh, built, init_source(config))


def pretrained_start(config: ml_collections.ConfigDict, source: restore.TrunkSource):
    """`fresh_start`: the meta-parameters' trunk (and its batch-norm statistics) from the
    checkpoint, the tokenizer copied into the workdir. LoRA factors start as initialised."""

    def fresh_start(state: TrainState, workdir: str) -> TrainState:
        finetune_stage.copy_tokenizer(config, workdir)
        return with_pretrained_trunk(state, config, source)

    return fresh_start


def with_pretrained_trunk(state: TrainState, config, source: restore.TrunkSource) -> TrainState:
    """`state` with the meta-parameters' trunk and batch-norm statistics from `source`."""
    params = dict(state.params["params"])
    params["trunk"], report = restore.restored_params(
        params["trunk"], source, keep_fresh=config.init.keep_fresh, skip=config.init.skip
    )
    model_state = dict(state.model_state)
    model_state["trunk"], report["statistics"] = restore.restored_stats(
        model_state["trunk"], source
    )
    finetune_stage.log_restore(source, report)
    return state.replace(params={**state.params, "params": params}, model_state=model_state)


def pretrained_learner(config: ml_collections.ConfigDict) -> Learner:
    """The learner of a meta-learning config with its trunk from `init.checkpoint`, without
    meta-training or a workdir: what a baseline (`meta.method=finetune`, `setfit`, or
    `protonets` as nearest prototype) adapts. No data is loaded.

        config = senteval_fewshot.get_config(); config.init.checkpoint = "/tmp/minilm"
        config.meta.method = "finetune"
        labels = pretrained_learner(config).adapt(sentences, labels).predict(queries)
    """
    validate(config)
    source = init_source(config)
    if source is None:
        raise ConfigError("pretrained_learner needs a trunk: set config.init.checkpoint.")
    kind, input_shape, preprocess = families.describe(config.data)
    built = build_learner(config, kind, input_shape)
    state = with_pretrained_trunk(built.init(config.seed), config, source)
    return Learner(config, built.learner, state.params, state.model_state, kind, preprocess, 0)


def experiment(p: Pieces) -> Experiment:
    """The meta-learning Experiment, with its `val` and `meta_test` evaluators."""
    config, built, m = p.config, p.built, p.config.meta
    source = EpisodeBatches.training(config, p.family, config.seed)
    metric = meta_eval.metric_name(built.kind)
    step = make_train_step(
        built.learner, built.optimizer, p.mesh, int(m.ways), metric, shots=int(m.shots)
    )
    return Experiment(
        config=config,
        init=lambda: built.init(config.seed),
        train_step=step,
        batches=source,
        mesh=p.mesh,
        guarded=GUARDED,
        loss_names=("meta-loss",),
        loss_noun="the",
        progress={"query": "query_loss", metric: f"query_{metric}"},
        evaluators=(
            val_evaluator(config, built, p.family, p.mesh),
            test_evaluator(config, built, p.family, p.mesh, p.settings),
        ),
        nonfinite_hint=(
            "Try a lower meta.inner_lr or optimizer.learning_rate, or gradient clipping "
            "(--config.optimizer.grad_clip_norm)."
        ),
        fresh_start=None if p.source is None else pretrained_start(config, p.source),
    )


def build(config: ml_collections.ConfigDict) -> Experiment:
    return experiment(pieces(config))


def val_evaluator(config, built: Built, family, mesh) -> Evaluator:
    """`val/<metric>`: the final-step query metric on `eval.val_episodes` meta-val episodes,
    every `eval.val_every` steps (0: never)."""
    m, metric = config.meta, meta_eval.metric_name(built.kind)
    setting = meta_eval.Setting(int(m.ways), int(m.shots), int(m.queries))
    curve_steps: list = []

    def fn(state: TrainState, context: EvalContext) -> dict[str, float]:
        if not curve_steps:
            curve_steps.append(
                meta_eval.make_curve_step(
                    built.learner, mesh, int(m.ways), int(m.inner_steps), shots=int(m.shots)
                )
            )
        score = meta_eval.make_scorer(family, config.eval, context.data_sharding)
        val = score(
            curve_steps[0], state.params, state.model_state, "val", setting,
            config.eval.val_episodes,
        )  # fmt: skip
        return {metric: float(val[:, -1].mean())}

    every = int(config.eval.get("val_every", 0) or 0)
    return Evaluator("val", fn, every=every, final=False)


def candidate_rates(learner) -> tuple[float, ...]:
    """The test-time fine-tuning rates a learner chooses among on meta-val (P>M>F)."""
    plan = getattr(learner, "plan", None)
    return tuple(plan.lrs) if plan is not None and len(plan.lrs) > 1 else ()


def choose_rate(config, learner, mesh, score, state: TrainState):
    """The learner with the fine-tuning rate whose meta-val accuracy (final step) is best,
    and `{"finetune_lr": rate, "val": {rate: accuracy}}`; unchanged without candidates."""
    rates = candidate_rates(learner)
    if not rates:
        return learner, {}
    m = config.meta
    setting = meta_eval.Setting(int(m.ways), int(m.shots), int(m.queries))
    val = {}
    for rate in rates:
        candidate = learner.with_lr(rate)
        step = meta_eval.make_curve_step(
            candidate, mesh, int(m.ways), int(config.eval.inner_steps), shots=int(m.shots)
        )
        curves_ = score(step, state.params, state.model_state, "val", setting,
                        config.eval.val_episodes)  # fmt: skip
        val[rate] = float(curves_[:, -1].mean())
    best = max(val, key=val.get)
    logging.info("Fine-tuning rate %g chosen on meta-val: %s", best, val)
    return learner.with_lr(best), {"finetune_lr": best, "val": {str(k): v for k, v in val.items()}}


def test_evaluator(config, built: Built, family, mesh, settings) -> Evaluator:
    """`meta_test`: per-episode curves of every setting on meta-test episodes, summarized
    (`selected`: a test-time rate chosen on meta-val first, see `choose_rate`)."""

    def fn(state: TrainState, context: EvalContext) -> dict[str, Any]:
        score = meta_eval.make_scorer(family, config.eval, context.data_sharding)
        learner, selected = choose_rate(config, built.learner, mesh, score, state)
        out = {"selected": selected} if selected else {}
        for s in settings:
            curve_step = meta_eval.make_curve_step(
                learner, mesh, s.ways, int(config.eval.inner_steps), shots=s.shots
            )
            per_episode = score(
                curve_step, state.params, state.model_state, "test", s, config.eval.episodes
            )
            out[s.name(built.kind)] = curves.summarize(per_episode)
        return out

    return Evaluator("meta_test", fn)


def train(config: ml_collections.ConfigDict, workdir: str) -> Result:
    """Meta-trains (or resumes) the learner, then the joint baseline if configured; writes the
    report. `Result.metrics["meta_test"]` holds what results.json holds."""
    p = pieces(config)
    result = run(experiment(p), workdir)
    if result.stopped:
        return result
    step, m = int(result.state.step), config.meta
    results = {"step": step, "method": m.method, "metric": meta_eval.metric_name(p.built.kind)}
    results["test"] = dict(result.metrics["meta_test"])
    if "selected" in results["test"]:
        results["selected"] = results["test"].pop("selected")
    labelled = {f"{m.method} {name}": c for name, c in results["test"].items()}
    if joint_baseline.enabled(config):
        baseline = joint_baseline.train_and_score(p, os.path.join(workdir, "joint"))
        if baseline is None:  # stopped: the same command resumes the baseline's run
            return dataclasses.replace(result, stopped=True)
        results["baseline"] = baseline
        labelled |= {f"pretrained {name}": summary for name, summary in baseline.items()}
    meta_eval.report(results, labelled, workdir, step)
    return dataclasses.replace(result, metrics={"meta_test": results})


def load_learner(workdir: str, *, step: int | None = None) -> Learner:
    """The learner of a `launch.train` meta-learning workdir, from its config.json and newest
    (or `step`'s) checkpoint, restored into the same state template training uses. The data
    set is not loaded: only what its inputs look like (for the preprocessing).

        learner = load_learner("/tmp/omniglot_maml")
        labels = learner.adapt(support_x, support_y, steps=10).predict(query_x)
    """
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{workdir} has no config.json: is it a launch.train workdir?")
    config = ml_collections.ConfigDict(workdir_files.read_json(path, fix=workdir_files.CONFIG_FIX))
    if config.get("trainer") != "meta":
        raise ConfigError(f"{workdir} holds a {config.get('trainer')!r} run, not a meta-learner.")
    kind, input_shape, preprocess = families.describe(config.data)
    built = build_learner(config, kind, input_shape)
    abstract = template(lambda: built.init(config.seed))
    manager = checkpoint.make_manager(os.path.join(workdir, "checkpoints"), every=1, keep=1)
    try:
        chosen = manager.latest_step() if step is None else step
        if chosen is None:
            raise FileNotFoundError(f"{workdir}/checkpoints holds no checkpoint yet.")
        state = manager.restore(chosen, args=ocp.args.StandardRestore(abstract))
    finally:
        manager.close()
    learner = built.learner
    selected = _selected(workdir)
    if "finetune_lr" in selected:  # the rate meta-val chose (P>M>F)
        learner = learner.with_lr(float(selected["finetune_lr"]))
    return Learner(config, learner, state.params, state.model_state, kind, preprocess, int(chosen))


def _selected(workdir: str) -> dict:
    """What the run chose on meta-val, from its results.json (empty when none)."""
    path = os.path.join(workdir, "results.json")
    if not os.path.isfile(path):
        return {}
    results = workdir_files.read_json(path, fix=RESULTS_FIX)
    return results.get("selected") or {}


# What to do about a damaged results.json: a finished run writes it again at its end.
RESULTS_FIX = (
    "Run the same launch.train command again to rewrite it (the run resumes from its newest "
    "checkpoint and evaluates again)."
)


def load_state(workdir: str) -> dict:
    """The newest checkpoint of a meta-learning workdir as host arrays (no template needed)."""
    return checkpoint.read_on_host(os.path.join(workdir, "checkpoints"))
