"""Partial restore: start a new model (new heads, perhaps LoRA factors) from a trunk checkpoint.

A trunk checkpoint is either
- a converted checkpoint (`python -m launch.convert`): `model.json` + Orbax `params/` holding
  `{"trunk": ...}`, or
- the workdir of a training run: `config.json` + Orbax `checkpoints/<step>/`, whose newest step
  holds `params/trunk` (only that subtree is read, not the optimizer state).

`restore_trunk` loads every trunk parameter the checkpoint has. Parameters only the new model
has must match `keep_fresh` (LoRA factors, soft prompts) and stay as initialised; checkpoint
parameters the new model lacks must match `skip` (the BERT pooler, used only with
`pooling="pooler"`). LoRA factors of a run restored into a model without LoRA are merged into
their kernels. Anything else, or a shape mismatch, is one `ConfigError` that lists it all,
raised before any array is read. Heads are never restored: new tasks get fresh heads.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
from flax import nnx

from mtl import checkpoint, workdir_files
from mtl.errors import ConfigError, DataError
from mtl.paths import flatten, unflatten

MODEL_FILE = "model.json"  # {"trunk": name, name: {options}} of a converted checkpoint
PARAMS_DIR = "params"
STATE_DIR = "state"  # batch-norm running statistics of a converted checkpoint, if any
# Trunk state restored with the weights: batch-norm running statistics (not RNG counters).
RUNNING_STATS = re.compile(r"/(mean|var)$")
KEEP_FRESH = (r"lora_[ab]$", r"^prompt/")
SKIP = (r"^pooler/",)


@dataclasses.dataclass(frozen=True)
class TrunkSource:
    params_path: str  # an Orbax checkpoint directory
    select: tuple[str, ...]  # where the trunk's params sit in it
    trunk: str  # trunk name
    options: dict[str, Any]  # the trunk's options as saved
    lora_scale: float | None = None  # alpha / rank when the run trained LoRA factors
    # Where the trunk's batch-norm running statistics are (an Orbax checkpoint), if anywhere.
    state_path: str | None = None
    state_select: tuple[str, ...] = ()


def find_source(path: str) -> TrunkSource:
    """Where the trunk parameters of a converted checkpoint or run workdir are."""
    if not os.path.isdir(path):
        raise DataError(f"The checkpoint {path} does not exist (config init.checkpoint).")
    if os.path.isfile(os.path.join(path, MODEL_FILE)):
        model = workdir_files.read_json(
            os.path.join(path, MODEL_FILE),
            fix="Convert the checkpoint again (python -m launch.convert --out=...).",
        )
        state = os.path.join(path, STATE_DIR)
        return TrunkSource(
            os.path.join(path, PARAMS_DIR),
            ("trunk",),
            model["trunk"],
            model[model["trunk"]],
            state_path=state if os.path.isdir(state) else None,
            state_select=("trunk",),
        )
    config_path = os.path.join(path, "config.json")
    steps_dir = os.path.join(path, "checkpoints")
    if os.path.isfile(config_path) and os.path.isdir(steps_dir):
        steps = sorted(int(s) for s in os.listdir(steps_dir) if s.isdigit())
        if not steps:
            raise DataError(f"The run {path} has no complete checkpoint in {steps_dir}.")
        config = workdir_files.read_json(config_path, fix=workdir_files.CONFIG_FIX)
        model, finetune = config["model"], config.get("finetune") or {}
        scale = None
        if finetune.get("strategy") == "lora":
            scale = finetune["lora"]["alpha"] / finetune["lora"]["rank"]
        params = os.path.join(steps_dir, str(steps[-1]), "default")
        options = model.get(model["trunk"]) or {}
        return TrunkSource(
            params,
            ("params", "trunk"),
            model["trunk"],
            options,
            scale,
            state_path=params,
            state_select=("model_state", "trunk"),
        )
    raise DataError(
        f"{path} is neither a converted checkpoint ({MODEL_FILE} + {PARAMS_DIR}/, made by "
        "`python -m launch.convert`) nor a run workdir (config.json + checkpoints/)."
    )


def check_architecture(
    model_config: Mapping[str, Any], source: TrunkSource, keys: Sequence[str]
) -> None:
    """`ConfigError` unless the config builds the trunk the checkpoint holds (`keys` options)."""
    name = model_config["trunk"]
    if name != source.trunk:
        raise ConfigError(
            f"The checkpoint holds a {source.trunk!r} trunk but config model.trunk is {name!r}."
        )
    ours = model_config.get(name) or {}
    diff = [k for k in keys if k in source.options and ours.get(k) != source.options[k]]
    if diff:
        fixes = " ".join(f"--config.model.{name}.{k}={source.options[k]}" for k in diff)
        raise ConfigError(
            f"The config's {name} trunk differs from the checkpoint's in {', '.join(diff)} "
            f"(config: {', '.join(f'{k}={ours.get(k)!r}' for k in diff)}). Set {fixes}."
        )


def take_architecture(model_config: Any, checkpoint: str) -> None:
    """Sets `model_config`'s trunk options to those the checkpoint was saved with (the ones the
    config has), so that a script builds whatever size of encoder it is given; the check above
    is for configs a user wrote."""
    source = find_source(checkpoint)
    trunk = model_config[source.trunk]
    trunk.update({k: v for k, v in source.options.items() if k in trunk})


def restore_trunk(
    trunk: nnx.Module,
    source: TrunkSource,
    *,
    keep_fresh: Sequence[str] = KEEP_FRESH,
    skip: Sequence[str] = SKIP,
) -> dict[str, list[str]]:
    """Loads the checkpoint's trunk parameters (and batch-norm running statistics) into
    `trunk` in place; returns the paths `loaded`, kept `fresh`, `skipped`, LoRA factors
    `merged` into their kernels, and the `statistics` restored."""
    state = nnx.state(trunk, nnx.Param)
    params, report = restored_params(
        nnx.to_pure_dict(state), source, keep_fresh=keep_fresh, skip=skip
    )
    nnx.replace_by_pure_dict(state, params)
    nnx.update(trunk, state)
    stats = nnx.state(trunk, nnx.BatchStat)
    if stats:
        values, report["statistics"] = restored_stats(nnx.to_pure_dict(stats), source)
        nnx.replace_by_pure_dict(stats, values)
        nnx.update(trunk, stats)
    return report


def restored_params(
    params: Mapping[str, Any],
    source: TrunkSource,
    *,
    keep_fresh: Sequence[str] = KEEP_FRESH,
    skip: Sequence[str] = SKIP,
) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """`params` (a trunk's pure parameter dict) with the checkpoint's values where it has
    them, and the report of `restore_trunk`; one `ConfigError` lists every misfit."""
    fresh = flatten(params)
    saved = flatten(checkpoint.tree_shapes(source.params_path, source.select))
    loaded, only_fresh, only_saved, merge = _fit(fresh, saved, source, keep_fresh, skip)
    like = unflatten({p: saved[p] for p in loaded + merge})
    values = flatten(checkpoint.read_subtree(source.params_path, source.select, like))
    for path in merge:
        if path.endswith("/lora_a"):
            layer = path.removesuffix("/lora_a")
            a, b = values[f"{layer}/lora_a"], values[f"{layer}/lora_b"]
            values[f"{layer}/kernel"] = values[f"{layer}/kernel"] + source.lora_scale * (a @ b)
    cast = {p: jax.numpy.asarray(values[p], fresh[p].dtype) for p in loaded}
    report = {"loaded": loaded, "fresh": only_fresh, "skipped": only_saved, "merged": merge}
    return unflatten({p: cast.get(p, v) for p, v in fresh.items()}), report


def restored_stats(
    state: Mapping[str, Any], source: TrunkSource
) -> tuple[dict[str, Any], list[str]]:
    """`state` (a trunk's pure non-parameter state) with the checkpoint's batch-norm running
    statistics where it has them, and their paths. A shape mismatch is a `ConfigError`."""
    fresh = flatten(state)
    wanted = [p for p in fresh if RUNNING_STATS.search(p)]
    if source.state_path is None or not wanted:
        return dict(state), []
    try:
        saved = flatten(checkpoint.tree_shapes(source.state_path, source.state_select))
    except ConfigError:  # a checkpoint without that subtree: no statistics to restore
        return dict(state), []
    found = [p for p in wanted if p in saved]
    mismatched = [
        f"{p}: checkpoint {tuple(saved[p].shape)}, model {tuple(fresh[p].shape)}"
        for p in found
        if tuple(saved[p].shape) != tuple(fresh[p].shape)
    ]
    if mismatched:
        raise ConfigError(
            f"The trunk checkpoint's batch-norm statistics do not fit the model: "
            f"{', '.join(mismatched[:8])}. Build the model with the checkpoint's options."
        )
    like = unflatten({p: saved[p] for p in found})
    values = flatten(checkpoint.read_subtree(source.state_path, source.state_select, like))
    cast = {p: jax.numpy.asarray(values[p], fresh[p].dtype) for p in found}
    return unflatten({p: cast.get(p, v) for p, v in fresh.items()}), found


def _fit(fresh, saved, source, keep_fresh, skip):
    """`(loaded, fresh only, saved only, LoRA factors to merge)`, or a `ConfigError`."""
    keep_fresh = [re.compile(p) for p in keep_fresh]
    skip = [re.compile(p) for p in skip]
    mismatched = [
        f"{p}: checkpoint {tuple(saved[p].shape)}, model {tuple(fresh[p].shape)}"
        for p in sorted(set(fresh) & set(saved))
        if tuple(saved[p].shape) != tuple(fresh[p].shape)
    ]
    only_fresh = sorted(set(fresh) - set(saved))
    only_saved = sorted(set(saved) - set(fresh))
    # LoRA factors of a run, restored into a model without them: merged into their kernels.
    merge = [p for p in only_saved if p.endswith(("/lora_a", "/lora_b"))]
    merge = merge if source.lora_scale is not None else []
    only_saved = [p for p in only_saved if p not in merge]
    missing = [p for p in only_fresh if not any(r.search(p) for r in keep_fresh)]
    unused = [p for p in only_saved if not any(r.search(p) for r in skip)]
    if mismatched or missing or unused:
        lines = [f"The trunk checkpoint {source.params_path} does not fit the model:"]
        for title, items in (
            ("shape mismatches", mismatched),
            ("model parameters the checkpoint lacks", missing),
            ("checkpoint parameters the model lacks", unused),
        ):
            if items:
                lines.append(f"  {title} ({len(items)}): {', '.join(items[:12])}")
        options = ", ".join(f"{k}={v}" for k, v in source.options.items())
        lines.append(
            f"Build the model with the checkpoint's {source.trunk} options ({options}); if it "
            "already has them, the saved arrays disagree with them: convert the weights again "
            "(python -m launch.convert, into a new --out) or start from another checkpoint. "
            "Nothing was loaded."
        )
        raise ConfigError("\n".join(lines))
    return sorted(set(fresh) & set(saved)), only_fresh, only_saved, merge
