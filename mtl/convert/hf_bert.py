"""Hugging Face BERT-family checkpoints (BERT, RoBERTa, DistilBERT) -> our `bert` trunk.

The mapping is one table per family: our parameter path (under the trunk), the checkpoint's
tensor name, and a transform. `{i}` stands for the layer index. PyTorch stores a linear layer's
weight as [out, in]; NNX's kernel is [in, out], hence `transpose`. Everything else is copied.
RoBERTa has BERT's layout (under `roberta.`) and numbers positions from `pad_token_id + 1`
(`position_offset`); DistilBERT names its layers differently and has no token types.

`convert` (mtl.convert.table) uses every row, then insists that every checkpoint tensor and every
parameter of the target was used exactly once; if not it raises one `ConversionError` listing
the checkpoint tensors left over, the parameters left empty and the shape mismatches, with a
hint.

Weights come from a directory (`config.json` + `model.safetensors`, read with safetensors: no
PyTorch needed) or from a `transformers` PyTorch model object (`state_dict_of`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from mtl.convert import table as tables
from mtl.convert.table import ConversionError, Row, keep, transpose
from mtl.errors import DataError

__all__ = ["ConversionError", "convert", "read_config", "read_safetensors", "table"]

# (our path under the trunk, checkpoint name, transform); `{i}` is the layer index.
EMBEDDINGS: tuple[Row, ...] = (
    ("embeddings/word/embedding", "embeddings.word_embeddings.weight", keep),
    ("embeddings/position/embedding", "embeddings.position_embeddings.weight", keep),
    ("embeddings/token_type/embedding", "embeddings.token_type_embeddings.weight", keep),
    ("embeddings/norm/scale", "embeddings.LayerNorm.weight", keep),
    ("embeddings/norm/bias", "embeddings.LayerNorm.bias", keep),
)
LAYER: tuple[Row, ...] = (
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
POOLER: tuple[Row, ...] = (
    ("pooler/kernel", "pooler.dense.weight", transpose),
    ("pooler/bias", "pooler.dense.bias", keep),
)
# DistilBERT: no token types, no pooler, its own layer names; the same post-norm blocks.
DISTILBERT_EMBEDDINGS: tuple[Row, ...] = tuple(r for r in EMBEDDINGS if "token_type" not in r[0])
DISTILBERT_LAYER: tuple[Row, ...] = (
    ("layers/{i}/attention/query/kernel", "transformer.layer.{i}.attention.q_lin.weight", transpose),
    ("layers/{i}/attention/query/bias", "transformer.layer.{i}.attention.q_lin.bias", keep),
    ("layers/{i}/attention/key/kernel", "transformer.layer.{i}.attention.k_lin.weight", transpose),
    ("layers/{i}/attention/key/bias", "transformer.layer.{i}.attention.k_lin.bias", keep),
    ("layers/{i}/attention/value/kernel", "transformer.layer.{i}.attention.v_lin.weight", transpose),
    ("layers/{i}/attention/value/bias", "transformer.layer.{i}.attention.v_lin.bias", keep),
    ("layers/{i}/attention/output/kernel", "transformer.layer.{i}.attention.out_lin.weight", transpose),
    ("layers/{i}/attention/output/bias", "transformer.layer.{i}.attention.out_lin.bias", keep),
    ("layers/{i}/attention/norm/scale", "transformer.layer.{i}.sa_layer_norm.weight", keep),
    ("layers/{i}/attention/norm/bias", "transformer.layer.{i}.sa_layer_norm.bias", keep),
    ("layers/{i}/intermediate/kernel", "transformer.layer.{i}.ffn.lin1.weight", transpose),
    ("layers/{i}/intermediate/bias", "transformer.layer.{i}.ffn.lin1.bias", keep),
    ("layers/{i}/output/kernel", "transformer.layer.{i}.ffn.lin2.weight", transpose),
    ("layers/{i}/output/bias", "transformer.layer.{i}.ffn.lin2.bias", keep),
    ("layers/{i}/norm/scale", "transformer.layer.{i}.output_layer_norm.weight", keep),
    ("layers/{i}/norm/bias", "transformer.layer.{i}.output_layer_norm.bias", keep),
)  # fmt: skip
# Checkpoint tensors that are not weights (PyTorch buffers): recognised and not converted.
BUFFERS = r"^embeddings\.(position_ids|token_type_ids)$"


def table(num_layers: int, pooler: bool, family: str = "bert") -> list[Row]:
    """The mapping rows for a model with `num_layers` layers (and a pooler, if it has one)."""
    embeddings, layer = (
        (DISTILBERT_EMBEDDINGS, DISTILBERT_LAYER) if family == "distilbert" else (EMBEDDINGS, LAYER)
    )
    rows = list(embeddings)
    for i in range(num_layers):
        rows += [(ours.format(i=i), theirs.format(i=i), f) for ours, theirs, f in layer]
    return rows + (list(POOLER) if pooler else [])


def normalize_name(name: str) -> str:
    """The base-model name of a tensor from any BERT-family checkpoint.

    Task models prefix the encoder (`bert.`, `roberta.`, `distilbert.`); checkpoints converted
    from the original TensorFlow code call layer-norm parameters `gamma` / `beta`.
    """
    name = re.sub(r"^(bert|roberta|distilbert)\.", "", name)
    name = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", name)
    return re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", name)


def _layer_count(paths: Sequence[str]) -> int:
    found = [int(m.group(1)) for p in paths if (m := re.match(r"layers/(\d+)/", p))]
    return max(found) + 1 if found else 0


def layout(family: str = "bert") -> tables.Layout:
    """The conversion `Layout` of one BERT family (`bert`, `roberta` or `distilbert`)."""
    has_pooler = lambda paths: any(p.startswith("pooler/") for p in paths)
    return tables.Layout(
        trunk="bert",
        rows=lambda paths: table(_layer_count(paths), has_pooler(paths), family),
        normalize=normalize_name,
        # The checkpoint's pooler goes unused when the run's pooling does not use it.
        unused=lambda paths: [BUFFERS] + ([] if has_pooler(paths) else [r"^pooler\."]),
        layer_name=r"^(?:encoder|transformer)\.layer\.(\d+)\.",
        size_fields=SIZE_FIELDS,
        weights_name="model.safetensors",
        leftover_hint=(
            "tensors of a task head (BertForMaskedLM's `cls.`, a classifier's `classifier.`) "
            "can be left out on purpose with drop=[regex]."
        ),
    )


def convert(
    weights: Mapping[str, np.ndarray],
    target: Mapping[str, Any],
    *,
    drop: Iterable[str] = (),
    config: Mapping[str, Any] | None = None,
    family: str = "bert",
) -> dict[str, Any]:
    """Parameters of a `bert` trunk from BERT-family checkpoint tensors (see
    `mtl.convert.table.convert`); `config` is the checkpoint's config.json when `target` was
    built from it, so that a shape mismatch names the field the tensor disagrees with."""
    return tables.convert(layout(family), weights, target, drop=drop, config=config)


# config.json field -> our `bert` trunk option, per family.
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
DISTILBERT_FIELDS = {
    "vocab_size": "vocab_size",
    "dim": "hidden_size",
    "n_layers": "num_layers",
    "n_heads": "num_heads",
    "hidden_dim": "intermediate_size",
    "max_position_embeddings": "max_position_embeddings",
    "activation": "hidden_act",
    "dropout": "dropout",
    "attention_dropout": "attention_dropout",
}
# model_type in config.json -> the family whose table converts it.
MODEL_TYPES = {
    "bert": "bert",
    "roberta": "roberta",
    "xlm-roberta": "roberta",
    "camembert": "roberta",
    "distilbert": "distilbert",
}
# config.json fields that set the size of some tensor dimension (checked on a mismatch).
SIZE_FIELDS = (
    "vocab_size",
    "hidden_size",
    "dim",
    "intermediate_size",
    "hidden_dim",
    "max_position_embeddings",
    "type_vocab_size",
)


def family_of(config: Mapping[str, Any]) -> str:
    """`bert`, `roberta` or `distilbert`: the table that converts a config.json's model."""
    return MODEL_TYPES[config["model_type"]]


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
    try:
        with open(path) as f:
            config = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(
            f"{path} is not valid JSON ({e}): the file is damaged or truncated; download or "
            "export the model again."
        ) from e
    check_config(config, path)
    return config


def check_config(config: Mapping[str, Any], where: str = "config") -> None:
    """Raises `DataError` unless `config` describes a model with a layout we convert."""
    model_type = config.get("model_type")
    if model_type not in MODEL_TYPES:
        raise DataError(
            f"{where}: model_type is {model_type!r}; the bert trunk converts "
            f"{', '.join(sorted(MODEL_TYPES))} checkpoints (BERT, MiniLM, BGE, E5, RoBERTa, "
            "DistilBERT, ...); decoder language models convert with mtl.convert.hf_decoder."
        )
    position = config.get("position_embedding_type", "absolute")
    if position != "absolute":
        raise DataError(f"{where}: position_embedding_type {position!r} is not supported.")


def trunk_options(config: Mapping[str, Any]) -> dict[str, Any]:
    """Our `bert` trunk options from a Hugging Face BERT-family config (dict)."""
    family = family_of(config)
    fields = DISTILBERT_FIELDS if family == "distilbert" else CONFIG_FIELDS
    options = {ours: config[theirs] for theirs, ours in fields.items() if theirs in config}
    if family == "distilbert":
        options |= {"type_vocab_size": 0, "layer_norm_eps": 1e-12}
    if family == "roberta":
        # RoBERTa numbers real tokens from pad_token_id + 1 (padding sits at pad_token_id).
        options["position_offset"] = config.get("pad_token_id", 1) + 1
    return options


def read_safetensors(hf_dir: str) -> dict[str, np.ndarray]:
    """All tensors of `model.safetensors` (or of the shards its index lists) as numpy arrays."""
    return tables.read_weights(hf_dir)


def state_dict_of(torch_model: Any) -> dict[str, np.ndarray]:
    """A `transformers` PyTorch model's tensors as numpy arrays (torch is only used here)."""
    return tables.state_dict_of_tensors(torch_model.state_dict())
