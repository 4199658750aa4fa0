"""Hugging Face BERT checkpoints -> parameters of our `bert` trunk.

The mapping is one table: our parameter path (under the trunk), the checkpoint's tensor name,
and a transform. `{i}` stands for the layer index. PyTorch stores a linear layer's weight as
[out, in]; NNX's kernel is [in, out], hence `transpose`. Everything else is copied.

`convert` uses every row, then insists that every checkpoint tensor and every parameter of the
target was used exactly once; if not it raises one `ConversionError` listing the checkpoint
tensors left over, the parameters left empty and the shape mismatches, with a hint.

Weights come from a directory (`config.json` + `model.safetensors`, read with safetensors: no
PyTorch needed) or from a `transformers` PyTorch model object (`from_torch`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from mtl.errors import DataError
from mtl.paths import flatten, unflatten

Transform = Callable[[np.ndarray], np.ndarray]


def keep(w: np.ndarray) -> np.ndarray:
    return w


def transpose(w: np.ndarray) -> np.ndarray:
    """PyTorch Linear [out, in] -> NNX Linear kernel [in, out]."""
    return np.ascontiguousarray(w.T)


# (our path under the trunk, checkpoint name, transform); `{i}` is the layer index.
EMBEDDINGS: tuple[tuple[str, str, Transform], ...] = (
    ("embeddings/word/embedding", "embeddings.word_embeddings.weight", keep),
    ("embeddings/position/embedding", "embeddings.position_embeddings.weight", keep),
    ("embeddings/token_type/embedding", "embeddings.token_type_embeddings.weight", keep),
    ("embeddings/norm/scale", "embeddings.LayerNorm.weight", keep),
    ("embeddings/norm/bias", "embeddings.LayerNorm.bias", keep),
)
LAYER: tuple[tuple[str, str, Transform], ...] = (
    ("layers/{i}/attention/query/kernel", "encoder.layer.{i}.attention.self.query.weight", transpose),
    ("layers/{i}/attention/query/bias", "encoder.layer.{i}.attention.self.query.bias", keep),
    ("layers/{i}/attention/key/kernel", "encoder.layer.{i}.attention.self.key.weight", transpose),
    ("layers/{i}/attention/key/bias", "encoder.layer.{i}.attention.self.key.bias", keep),
    ("layers/{i}/attention/value/kernel", "encoder.layer.{i}.attention.self.value.weight", transpose),
    ("layers/{i}/attention/value/bias", "encoder.layer.{i}.attention.self.value.bias", keep),
    ("layers/{i}/attention/output/kernel", "encoder.layer.{i}.attention.output.dense.weight", transpose),
    ("layers/{i}/attention/output/bias", "encoder.layer.{i}.attention.output.dense.bias", keep),
    ("layers/{i}/attention/norm/scale", "encoder.layer.{i}.attention.output.LayerNorm.weight", keep),
    ("layers/{i}/attention/norm/bias", "encoder.layer.{i}.attention.output.LayerNorm.bias", keep),
    ("layers/{i}/intermediate/kernel", "encoder.layer.{i}.intermediate.dense.weight", transpose),
    ("layers/{i}/intermediate/bias", "encoder.layer.{i}.intermediate.dense.bias", keep),
    ("layers/{i}/output/kernel", "encoder.layer.{i}.output.dense.weight", transpose),
    ("layers/{i}/output/bias", "encoder.layer.{i}.output.dense.bias", keep),
    ("layers/{i}/norm/scale", "encoder.layer.{i}.output.LayerNorm.weight", keep),
    ("layers/{i}/norm/bias", "encoder.layer.{i}.output.LayerNorm.bias", keep),
)  # fmt: skip
POOLER: tuple[tuple[str, str, Transform], ...] = (
    ("pooler/kernel", "pooler.dense.weight", transpose),
    ("pooler/bias", "pooler.dense.bias", keep),
)
# Checkpoint tensors that are not weights (PyTorch buffers): recognised and not converted.
BUFFERS = re.compile(r"^embeddings\.(position_ids|token_type_ids)$")

# config.json field -> our `bert` trunk option.
CONFIG_FIELDS = {
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "num_hidden_layers": "num_layers",
    "num_attention_heads": "num_heads",
    "intermediate_size": "intermediate_size",
    "max_position_embeddings": "max_position_embeddings",
    "type_vocab_size": "type_vocab_size",
    "layer_norm_eps": "layer_norm_eps",
    "hidden_act": "hidden_act",
    "hidden_dropout_prob": "dropout",
    "attention_probs_dropout_prob": "attention_dropout",
}


class ConversionError(DataError):
    """The checkpoint's tensors and the model's parameters do not match one to one."""


def table(num_layers: int, pooler: bool) -> list[tuple[str, str, Transform]]:
    """The mapping rows for a model with `num_layers` layers (and a pooler, if it has one)."""
    rows = list(EMBEDDINGS)
    for i in range(num_layers):
        rows += [(ours.format(i=i), theirs.format(i=i), f) for ours, theirs, f in LAYER]
    return rows + (list(POOLER) if pooler else [])


def normalize_name(name: str) -> str:
    """The `BertModel` name of a tensor from any BERT-family checkpoint.

    `BertFor...` models prefix the encoder with `bert.`; checkpoints converted from the original
    TensorFlow code call layer-norm parameters `gamma` / `beta`.
    """
    name = name.removeprefix("bert.")
    name = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", name)
    return re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", name)


def convert(
    weights: Mapping[str, np.ndarray],
    target: Mapping[str, Any],
    *,
    drop: Iterable[str] = (),
    config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Parameters of a `bert` trunk from checkpoint tensors.

    Args:
      weights: checkpoint name -> array (`read_safetensors`, `state_dict_of`).
      target: the trunk's parameters or their shapes (a nested dict whose leaves have
        `.shape`), e.g. `nnx.to_pure_dict(nnx.state(nnx.eval_shape(...), nnx.Param))`.
      drop: regexes of checkpoint names to leave out on purpose (say `cls\\.` for the masked-LM
        head of a `BertForMaskedLM` checkpoint). The pooler is left out when the target has none.
      config: the checkpoint's config.json when `target` was built from it; a shape mismatch
        then names the config.json field the tensor disagrees with.

    Returns:
      A nested dict with the structure of `target`, float32 numpy leaves.

    Raises:
      ConversionError: listing leftovers on both sides and shape mismatches, all at once.
    """
    drop = [re.compile(p) for p in drop]
    source = _source_tensors(weights)
    wanted = flatten(target)
    num_layers = len(target.get("layers", {}))
    has_pooler = "pooler" in target
    match = _match(table(num_layers, has_pooler), source, wanted)
    leftover = _leftover(source, match.used, has_pooler, drop)
    unfilled = sorted(set(wanted) - set(match.out) - match.bad_shape)
    problems = (leftover, match.missing, match.mismatched, unfilled)
    if any(problems):
        disagree = _disagreements(match.sizes, config)
        raise ConversionError(_report(*problems, num_layers, disagree))
    return unflatten(match.out)


def _source_tensors(weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`weights` as numpy arrays under their `normalize_name`s; `ConversionError` if two
    names normalise to the same one."""
    source: dict[str, list[str]] = {}
    for name in weights:
        source.setdefault(normalize_name(name), []).append(name)
    duplicates = {k: v for k, v in source.items() if len(v) > 1}
    if duplicates:
        raise ConversionError(
            "The checkpoint holds the same weight under several names: "
            + "; ".join(" and ".join(v) for v in duplicates.values())
        )
    return {k: np.asarray(weights[v[0]]) for k, v in source.items()}


def _leftover(
    source: Iterable[str], used: set[str], has_pooler: bool, drop: Iterable[re.Pattern[str]]
) -> list[str]:
    """The checkpoint names, sorted, that no row used and that are not expected to go unused:
    buffers, the pooler of a target without one, or names matching a `drop` pattern."""
    return sorted(
        name
        for name in source
        if name not in used
        and not BUFFERS.match(name)
        and not (name.startswith("pooler.") and not has_pooler)  # pooling chose not to use it
        and not any(p.search(name) for p in drop)
    )


@dataclasses.dataclass
class _Match:
    """What `_match` made of the table rows."""

    out: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # our path -> value
    used: set[str] = dataclasses.field(default_factory=set)  # checkpoint names used
    bad_shape: set[str] = dataclasses.field(default_factory=set)  # our paths, shape mismatch
    sizes: set[tuple[int, int]] = dataclasses.field(default_factory=set)  # (model, tensor) dims
    missing: list[str] = dataclasses.field(default_factory=list)  # rows without a tensor/param
    mismatched: list[str] = dataclasses.field(default_factory=list)  # shape mismatch messages


def _match(
    rows: Iterable[tuple[str, str, Transform]],
    source: Mapping[str, np.ndarray],
    wanted: Mapping[str, Any],
) -> _Match:
    """Applies each row to `source`, checking the result against the shapes in `wanted`."""
    match = _Match()
    missing_source, missing_target = [], []
    for ours, theirs, transform in rows:
        if theirs not in source:
            missing_source.append(f"{theirs} (for {ours})")
            continue
        match.used.add(theirs)
        if ours not in wanted:  # only when the table and the trunk disagree: a bug here
            missing_target.append(f"{ours} (from {theirs})")
            continue
        value = transform(source[theirs])
        shape = tuple(wanted[ours].shape)
        if tuple(value.shape) != shape:
            match.bad_shape.add(ours)
            match.sizes |= {(w, g) for w, g in zip(shape, value.shape, strict=False) if w != g}
            match.mismatched.append(
                f"{theirs} {tuple(source[theirs].shape)} -> {ours}: the model needs {shape}"
            )
            continue
        match.out[ours] = value.astype(np.float32)
    match.missing = missing_source + missing_target
    return match


# config.json fields that set the size of some tensor dimension.
SIZE_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "max_position_embeddings",
    "type_vocab_size",
)


def _disagreements(sizes: set[tuple[int, int]], config: Mapping[str, Any] | None) -> list[str]:
    """`intermediate_size=1536 (a tensor has 1535)` for each config.json field that a
    mismatched tensor dimension contradicts; `sizes` holds (model, tensor) dimension pairs."""
    if config is None:
        return []
    return sorted(
        f"{field}={config[field]} (a tensor has {got})"
        for field in SIZE_FIELDS
        for want, got in sizes
        if config.get(field) == want
    )


def _report(leftover, missing, mismatched, unfilled, num_layers, disagree=()) -> str:
    lines = ["The checkpoint does not match the bert trunk one to one."]
    for title, items in (
        ("Checkpoint tensors left over", leftover),
        ("Table rows without a checkpoint tensor or model parameter", missing),
        ("Shape mismatches", mismatched),
        ("Model parameters left without a value", unfilled),
    ):
        if items:
            shown = "\n    ".join(items[:40]) + (
                f"\n    ... {len(items) - 40} more" if len(items) > 40 else ""
            )
            lines.append(f"  {title} ({len(items)}):\n    {shown}")
    layers = {int(m.group(1)) for n in leftover if (m := re.match(r"encoder\.layer\.(\d+)\.", n))}
    if layers and min(layers) >= num_layers:
        lines.append(
            f"Hint: the checkpoint has {max(layers) + 1} layers, the model {num_layers}: build the "
            "model from the checkpoint's config.json (trunk_options) or set model.bert.num_layers."
        )
    elif mismatched and disagree:
        # The model was built from config.json, so the weights and config.json disagree.
        lines.append(
            f"Hint: config.json says {', '.join(disagree)}: the weight file is damaged or "
            "belongs to another model. Download or export model.safetensors again together "
            "with its own config.json (or correct config.json if the tensors are right)."
        )
    elif mismatched:
        lines.append(
            "Hint: build the model from the checkpoint's config.json (trunk_options) so that "
            "vocab_size, hidden_size, intermediate_size and max_position_embeddings agree."
        )
    elif leftover:
        lines.append(
            "Hint: tensors of a task head (BertForMaskedLM's `cls.`, a classifier's "
            "`classifier.`) can be left out on purpose with drop=[regex]."
        )
    return "\n".join(lines)


# --- reading checkpoints -------------------------------------------------------------------


def read_config(hf_dir: str) -> dict[str, Any]:
    """The checkpoint's config.json, checked to be a BERT-family model we can load."""
    path = os.path.join(hf_dir, "config.json")
    if not os.path.isdir(hf_dir):
        raise DataError(f"The checkpoint directory {hf_dir} does not exist.")
    if not os.path.isfile(path):
        raise DataError(
            f"{hf_dir} has no config.json: point at a Hugging Face model directory (as written "
            "by `save_pretrained`), holding config.json and model.safetensors."
        )
    with open(path) as f:
        config = json.load(f)
    check_config(config, path)
    return config


def check_config(config: Mapping[str, Any], where: str = "config") -> None:
    """Raises `DataError` unless `config` describes a model with BertModel's layout."""
    model_type = config.get("model_type")
    if model_type != "bert":
        raise DataError(
            f"{where}: model_type is {model_type!r}; only BERT-layout checkpoints (model_type "
            "'bert': BERT, MiniLM, BGE, E5, ...) convert to the bert trunk."
        )
    position = config.get("position_embedding_type", "absolute")
    if position != "absolute":
        raise DataError(f"{where}: position_embedding_type {position!r} is not supported.")


def trunk_options(config: Mapping[str, Any]) -> dict[str, Any]:
    """Our `bert` trunk options from a Hugging Face BERT config (dict)."""
    return {ours: config[theirs] for theirs, ours in CONFIG_FIELDS.items() if theirs in config}


def read_safetensors(hf_dir: str) -> dict[str, np.ndarray]:
    """All tensors of `model.safetensors` (or of the shards its index lists) as numpy arrays."""
    from safetensors.numpy import load_file

    single = os.path.join(hf_dir, "model.safetensors")
    index = os.path.join(hf_dir, "model.safetensors.index.json")
    if os.path.isfile(single):
        return load_file(single)
    if os.path.isfile(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        weights = {}
        for shard in shards:
            weights.update(load_file(os.path.join(hf_dir, shard)))
        return weights
    others = [f for f in os.listdir(hf_dir) if f.endswith((".bin", ".h5", ".msgpack", ".ckpt"))]
    hint = (
        f" It holds {', '.join(sorted(others))}: load it once with transformers "
        "(`BertModel.from_pretrained(dir)`) and pass the model to `from_torch`, or re-save it "
        "with `save_pretrained(dir, safe_serialization=True)`."
        if others
        else ""
    )
    raise DataError(f"{hf_dir} has no model.safetensors (or model.safetensors.index.json).{hint}")


def state_dict_of(torch_model: Any) -> dict[str, np.ndarray]:
    """A `transformers` PyTorch model's tensors as numpy arrays (torch is only used here)."""
    return {k: v.detach().cpu().float().numpy() for k, v in torch_model.state_dict().items()}
