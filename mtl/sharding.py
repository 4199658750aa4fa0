"""Sharding rules: regexes over train-state paths mapped to mesh axes.

A trunk too big for one device is split over the `fsdp` or `model` axis of the mesh by rules
in the config, first match wins, anything unmatched replicated:

    config.sharding.rules = (
        (r"trunk/.*/(query|key|value|dense)/kernel", (None, "model")),  # split dim 1 over model
        (r"trunk/.*kernel", "fsdp"),  # the largest dimension that divides evenly, over fsdp
    )

A rule is `(regex, spec)`. The regex is searched (`re.search`) in the path of every leaf of the
train state, written like `params/trunk/blocks/0/conv/kernel`; optimizer moments live at
`opt_state/0/mu/trunk/blocks/0/conv/kernel`, so a rule that names a parameter without
anchoring to `params/` shards its moments the same way. The spec is one of:

- a tuple with one entry per leading dimension: an axis name, a tuple of axis names, or None
  (dimensions past the tuple stay whole), as in `jax.sharding.PartitionSpec`;
- one axis name as a string: the largest dimension that the axis size divides (big_vision's
  `fsdp` strategy), or whole if none does;
- None or (): replicated.

An axis name the mesh lacks, a spec longer than the array's rank, or a split that does not
divide a dimension is a `ConfigError` naming the leaf.

Ready-made rule sets live in `PRESETS` (and in each trunk module's `SHARDING_PRESETS`:
`resnet_fsdp`, `vit_fsdp`, `vit_megatron`, `decoder_fsdp`, `decoder_megatron`; `presets()`
lists them all) and are chosen with `config.sharding.preset` (say
`--config.sharding.preset=bert_fsdp`); `config.sharding.rules` come first, so they can
override a preset's rules for some paths.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mtl.errors import ConfigError, unknown_name
from mtl.paths import path_str

PyTree = Any
Rule = tuple[str, Any]

# The large matrices of the `bert` trunk (mtl/models/trunks/bert.py): word and position
# embeddings, attention query/key/value/output and the feed-forward kernels. `$` keeps LoRA
# factors and biases out. Rules without `params/` also split the optimizer moments.
_BERT = r"trunk/layers/\d+/"
PRESETS: dict[str, tuple[Rule, ...]] = {
    # ZeRO-3 style: each matrix split along its largest dimension the fsdp axis divides; the
    # batch is split over data x fsdp, and XLA gathers a layer's weights where it is used.
    "bert_fsdp": (
        (r"trunk/embeddings/(word|position)/embedding$", "fsdp"),
        (_BERT + r"(attention/(query|key|value|output)|intermediate|output)/kernel$", "fsdp"),
    ),
    # Megatron style: heads and feed-forward columns split over `model`, so attention and the
    # MLP run on 1/model of the features; the output projections are split by rows to match.
    "bert_megatron": (
        (r"trunk/embeddings/word/embedding$", (None, "model")),
        (_BERT + r"(attention/(query|key|value)|intermediate)/kernel$", (None, "model")),
        (_BERT + r"(attention/(query|key|value)|intermediate)/bias$", ("model",)),
        (_BERT + r"(attention/)?output/kernel$", ("model", None)),
    ),
}


def presets() -> dict[str, tuple[Rule, ...]]:
    """Every preset: those above and those the trunk modules define."""
    from mtl.models.trunks import SHARDING_PRESETS

    return {**PRESETS, **SHARDING_PRESETS}


def config_rules(config: Any) -> tuple[Rule, ...]:
    """The rules of a config's `sharding` section: its `rules`, then its `preset`'s."""
    section = config.get("sharding") or {}
    rules = tuple(section.get("rules") or ())
    preset = section.get("preset") or ""
    known = presets()
    if preset and preset not in known:
        raise unknown_name("sharding preset", preset, known, field="sharding.preset")
    return rules + tuple(known.get(preset, ()))


def check_rules(rules: Sequence[Rule], mesh: Mesh) -> list[tuple[re.Pattern, Any]]:
    """Compiled rules, after checking their form and that they name axes of `mesh`."""
    compiled = []
    for i, rule in enumerate(rules or ()):
        if not (isinstance(rule, Sequence) and len(rule) == 2 and isinstance(rule[0], str)):
            raise ConfigError(
                f"config sharding.rules[{i}] must be (regex, spec), got {rule!r}; e.g. "
                "(r'trunk/.*kernel', 'fsdp')."
            )
        pattern, spec = rule
        try:
            regex = re.compile(pattern)
        except re.error as e:
            raise ConfigError(f"config sharding.rules[{i}]: bad regex {pattern!r} ({e}).") from None
        for axis in _axes_named(spec):
            if axis not in mesh.shape:
                raise ConfigError(
                    f"config sharding.rules[{i}] ({pattern!r}) names mesh axis {axis!r}; the "
                    f"mesh has {', '.join(mesh.axis_names)} (sizes in config mesh.*)."
                )
        compiled.append((regex, spec))
    return compiled


def spec_for(path: str, shape: Sequence[int], spec: Any, mesh: Mesh) -> P:
    """The `PartitionSpec` of one leaf of `shape` under a rule's `spec`."""
    if spec is None or spec == () or spec == []:
        return P()
    if isinstance(spec, str):
        size = mesh.shape[spec]
        # Largest dimension first; among equals the last (output features, usually).
        order = sorted(range(len(shape)), key=lambda d: (shape[d], d), reverse=True)
        for dim in order:
            if shape[dim] % size == 0 and shape[dim] >= size:
                return P(*([None] * dim), spec)
        return P()
    spec = tuple(spec)
    if len(spec) > len(shape):
        raise ConfigError(
            f"Sharding rule spec {spec} has {len(spec)} entries but {path} has shape "
            f"{tuple(shape)}; give at most one entry per dimension."
        )
    for dim, axes in enumerate(spec):
        size = math.prod(mesh.shape[a] for a in _axes_named(axes))
        if shape[dim] % size:
            raise ConfigError(
                f"Sharding rule spec {spec} splits dimension {dim} of {path} (shape "
                f"{tuple(shape)}) over {size} devices, which does not divide {shape[dim]}."
            )
    return P(*spec)


def tree_shardings(tree: PyTree, rules: Sequence[Rule], mesh: Mesh) -> PyTree:
    """A `NamedSharding` for every leaf of `tree` (arrays or `jax.ShapeDtypeStruct`s)."""
    compiled = check_rules(rules, mesh)

    def one(keypath, leaf):
        path = path_str(keypath)
        for regex, spec in compiled:
            if regex.search(path):
                return NamedSharding(mesh, spec_for(path, leaf.shape, spec, mesh))
        return NamedSharding(mesh, P())

    return jax.tree_util.tree_map_with_path(one, tree)


def summary(tree: PyTree, shardings: PyTree, prefix: str = "params/") -> str:
    """One line per split leaf under `prefix`, and the share of values held per device."""
    lines, total, per_device = [], 0, 0.0
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    for (keypath, leaf), sharding in zip(flat, jax.tree_util.tree_leaves(shardings), strict=True):
        path = path_str(keypath)
        if not path.startswith(prefix):
            continue
        size = math.prod(leaf.shape)
        shards = math.prod(
            math.prod(sharding.mesh.shape[a] for a in _axes_named(axes)) for axes in sharding.spec
        )
        total += size
        per_device += size / shards
        if shards > 1:
            lines.append(f"  {path} {tuple(leaf.shape)} -> {sharding.spec}")
    head = (
        f"Sharding: {len(lines)} parameter arrays split; each device holds "
        f"{per_device / max(total, 1):.1%} of the {total:,} parameter values."
    )
    return "\n".join([head, *lines])


def _axes_named(spec: Any) -> list[str]:
    """Every axis name in a spec (a name, a tuple of names / None / tuples, or None)."""
    if spec is None:
        return []
    if isinstance(spec, str):
        return [spec]
    return [a for entry in spec for a in _axes_named(entry)]
