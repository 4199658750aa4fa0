"""Parameter paths as strings (`trunk/layers/0/attention/query/kernel`) and nested dicts.

Sharding rules, fine-tuning groups, weight-conversion tables and checkpoint listings all name
parameters by these strings; this module is the one place that turns trees into them and back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def path_str(keypath: Sequence[Any]) -> str:
    """`params/trunk/blocks/0/conv/kernel` for a JAX key path."""
    parts = []
    for key in keypath:
        for attr in ("key", "name", "idx"):  # DictKey, GetAttrKey, SequenceKey
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"a": {0: {"b": x}}}` -> `{"a/0/b": x}` (nested mappings only, leaves kept as they are)."""
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, path + "/"))
        else:
            flat[path] = value
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """`{"a/0/b": x}` -> `{"a": {0: {"b": x}}}`; digit keys become ints as NNX lists use."""
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        *parents, last = [int(p) if p.isdigit() else p for p in path.split("/")]
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return tree
