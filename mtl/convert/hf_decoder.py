"""Hugging Face decoder checkpoints -> our `decoder` trunk: Llama-style models and GPT-2.

    trunk = load_decoder("/path/to/hf_model")          # config.json + model.safetensors
    trunk = decoder_from_torch(transformers_model)      # a PyTorch model object at hand

Accepted `model_type`s: `llama`, `mistral` and `qwen2` (one layout: `LlamaForCausalLM`,
`LlamaModel` and their Mistral / Qwen2 twins; the decoder's `arch="llama"`) and `gpt2`
(`GPT2LMHeadModel`, `GPT2Model`; `arch="gpt2"`). What the trunk does not implement is refused
by name in `check_config`: rope scaling, Qwen2's per-layer sliding window, activations other
than SiLU (Llama) or tanh-GELU (GPT-2), GPT-2's attention-scaling variants, cross-attention.

Each family is a `table.Layout`: rows `(our path, checkpoint name, transform)`, `{i}` the
layer index, after the names are normalised (`model.` / `transformer.` prefixes stripped, so
that the causal-LM and the bare model read alike). PyTorch's Linear is [out, in], hence
`transpose`; GPT-2's Conv1D is already [in, out] (`keep`), and its fused `c_attn` [hidden,
3 x hidden] is read by three rows, one third each. Rows of optional parameters (biases, the
LM head) apply when the trunk built from config.json has them, so a checkpoint with a bias the
config does not announce is a leftover, not silently dropped.

A tied model (GPT-2, `tie_word_embeddings`) has no `lm_head/` parameter: its checkpoint's
`lm_head.weight`, if saved at all, is the embedding again and expected to go unused. An untied
checkpoint without `lm_head.weight` (a bare `LlamaModel`) gives a trunk with `lm_head=False`:
hidden states and classification work, `logits` refuses.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from flax import nnx

from mtl.convert.table import (
    Layout,
    Row,
    Transform,
    build_trunk,
    keep,
    read_weights,
    state_dict_of_tensors,
    transpose,
)
from mtl.errors import DataError

LLAMA_TYPES = ("llama", "mistral", "qwen2")
GPT2_TYPES = ("gpt2",)


def _third(k: int) -> Transform:
    """Part k of 3 along the last axis: GPT-2's fused query/key/value weight and bias."""

    def part(w: np.ndarray) -> np.ndarray:
        n = w.shape[-1] // 3
        return np.ascontiguousarray(w[..., k * n : (k + 1) * n])

    return part


query_third, key_third, value_third = _third(0), _third(1), _third(2)

# (our path under the trunk, checkpoint name after `normalize`, transform)
LLAMA_ROWS: tuple[Row, ...] = (
    ("embeddings/word/embedding", "embed_tokens.weight", keep),
    ("norm/scale", "norm.weight", keep),
    ("lm_head/kernel", "lm_head.weight", transpose),
)
LLAMA_LAYER: tuple[Row, ...] = (
    ("layers/{i}/attention/norm/scale", "layers.{i}.input_layernorm.weight", keep),
    ("layers/{i}/attention/query/kernel", "layers.{i}.self_attn.q_proj.weight", transpose),
    ("layers/{i}/attention/query/bias", "layers.{i}.self_attn.q_proj.bias", keep),
    ("layers/{i}/attention/key/kernel", "layers.{i}.self_attn.k_proj.weight", transpose),
    ("layers/{i}/attention/key/bias", "layers.{i}.self_attn.k_proj.bias", keep),
    ("layers/{i}/attention/value/kernel", "layers.{i}.self_attn.v_proj.weight", transpose),
    ("layers/{i}/attention/value/bias", "layers.{i}.self_attn.v_proj.bias", keep),
    ("layers/{i}/attention/output/kernel", "layers.{i}.self_attn.o_proj.weight", transpose),
    ("layers/{i}/attention/output/bias", "layers.{i}.self_attn.o_proj.bias", keep),
    ("layers/{i}/norm/scale", "layers.{i}.post_attention_layernorm.weight", keep),
    ("layers/{i}/gate_intermediate/kernel", "layers.{i}.mlp.gate_proj.weight", transpose),
    ("layers/{i}/gate_intermediate/bias", "layers.{i}.mlp.gate_proj.bias", keep),
    ("layers/{i}/intermediate/kernel", "layers.{i}.mlp.up_proj.weight", transpose),
    ("layers/{i}/intermediate/bias", "layers.{i}.mlp.up_proj.bias", keep),
    ("layers/{i}/output/kernel", "layers.{i}.mlp.down_proj.weight", transpose),
    ("layers/{i}/output/bias", "layers.{i}.mlp.down_proj.bias", keep),
)  # fmt: skip
GPT2_ROWS: tuple[Row, ...] = (
    ("embeddings/word/embedding", "wte.weight", keep),
    ("embeddings/position/embedding", "wpe.weight", keep),
    ("norm/scale", "ln_f.weight", keep),
    ("norm/bias", "ln_f.bias", keep),
    ("lm_head/kernel", "lm_head.weight", transpose),
)
GPT2_LAYER: tuple[Row, ...] = (
    ("layers/{i}/attention/norm/scale", "h.{i}.ln_1.weight", keep),
    ("layers/{i}/attention/norm/bias", "h.{i}.ln_1.bias", keep),
    ("layers/{i}/attention/query/kernel", "h.{i}.attn.c_attn.weight", query_third),
    ("layers/{i}/attention/query/bias", "h.{i}.attn.c_attn.bias", query_third),
    ("layers/{i}/attention/key/kernel", "h.{i}.attn.c_attn.weight", key_third),
    ("layers/{i}/attention/key/bias", "h.{i}.attn.c_attn.bias", key_third),
    ("layers/{i}/attention/value/kernel", "h.{i}.attn.c_attn.weight", value_third),
    ("layers/{i}/attention/value/bias", "h.{i}.attn.c_attn.bias", value_third),
    ("layers/{i}/attention/output/kernel", "h.{i}.attn.c_proj.weight", keep),
    ("layers/{i}/attention/output/bias", "h.{i}.attn.c_proj.bias", keep),
    ("layers/{i}/norm/scale", "h.{i}.ln_2.weight", keep),
    ("layers/{i}/norm/bias", "h.{i}.ln_2.bias", keep),
    ("layers/{i}/intermediate/kernel", "h.{i}.mlp.c_fc.weight", keep),
    ("layers/{i}/intermediate/bias", "h.{i}.mlp.c_fc.bias", keep),
    ("layers/{i}/output/kernel", "h.{i}.mlp.c_proj.weight", keep),
    ("layers/{i}/output/bias", "h.{i}.mlp.c_proj.bias", keep),
)  # fmt: skip

# Parameters a trunk has or lacks by its options; their rows apply only where it has them.
OPTIONAL = re.compile(r"(/bias$|^lm_head/)")


def _rows(fixed: Sequence[Row], layer: Sequence[Row]):
    def rows(paths: Sequence[str]) -> list[Row]:
        have = set(paths)
        count = 1 + max((int(p.split("/")[1]) for p in have if p.startswith("layers/")), default=-1)
        table = list(fixed) + [
            (ours.format(i=i), theirs.format(i=i), f)
            for i in range(count)
            for ours, theirs, f in layer
        ]
        return [row for row in table if row[0] in have or not OPTIONAL.search(row[0])]

    return rows


def _tied_head(paths: Sequence[str]) -> list[str]:
    """A tied target has no `lm_head/`: the checkpoint's copy of the embedding goes unused."""
    return [] if "lm_head/kernel" in paths else [r"^lm_head\.weight$"]


LLAMA = Layout(
    trunk="decoder",
    rows=_rows(LLAMA_ROWS, LLAMA_LAYER),
    normalize=lambda name: name.removeprefix("model."),
    # Older checkpoints saved the rotary frequencies, a buffer recomputed from rope_theta.
    unused=lambda paths: [*_tied_head(paths), r"\.rotary_emb\.inv_freq$"],
    layer_name=r"^layers\.(\d+)\.",
    size_fields=(
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
    ),
    leftover_hint=(
        "tensors of a task head (a classifier's `score.`) can be left out on purpose with "
        "drop=[regex]; a bias the config does not announce means config.json and the weights "
        "disagree (attention_bias, mlp_bias)."
    ),
)
GPT2 = Layout(
    trunk="decoder",
    rows=_rows(GPT2_ROWS, GPT2_LAYER),
    normalize=lambda name: name.removeprefix("transformer."),
    # The causal-mask buffers older transformers versions saved.
    unused=lambda paths: [*_tied_head(paths), r"^h\.\d+\.attn\.(bias|masked_bias)$"],
    layer_name=r"^h\.(\d+)\.",
    size_fields=("vocab_size", "n_embd", "n_inner", "n_positions"),
    leftover_hint=(
        "tensors of a task head (a classifier's `score.`) can be left out on purpose with "
        "drop=[regex]."
    ),
)


# --- config.json -> trunk options --------------------------------------------------------


def check_config(config: Mapping[str, Any], where: str = "config") -> None:
    """Raises `DataError` naming the field unless the decoder trunk implements `config`."""
    model_type = config.get("model_type")
    if model_type not in LLAMA_TYPES + GPT2_TYPES:
        raise DataError(
            f"{where}: model_type is {model_type!r}; the decoder trunk converts "
            f"{', '.join(LLAMA_TYPES + GPT2_TYPES)}."
        )
    problems = _llama_problems(config) if model_type in LLAMA_TYPES else _gpt2_problems(config)
    if problems:
        raise DataError(
            f"{where}: this {model_type} checkpoint uses what the decoder trunk does not "
            f"implement: {'; '.join(problems)}."
        )


def _llama_problems(config: Mapping[str, Any]) -> list[str]:
    problems = []
    # transformers 5 writes `rope_parameters`, earlier versions `rope_scaling`.
    for field in ("rope_parameters", "rope_scaling"):
        rope = config.get(field) or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            problems.append(f"{field} of type {rope_type!r} (only plain rotary embeddings)")
    if _rope(config).get("partial_rotary_factor", 1.0) != 1.0:
        problems.append("partial_rotary_factor != 1")
    if config.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act {config['hidden_act']!r} (only 'silu')")
    if config.get("model_type") == "qwen2" and config.get("use_sliding_window"):
        problems.append("use_sliding_window (Qwen2's per-layer windows)")
    return problems


def _gpt2_problems(config: Mapping[str, Any]) -> list[str]:
    problems = []
    act = config.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        problems.append(f"activation_function {act!r} (only tanh-GELU, 'gelu_new')")
    if not config.get("scale_attn_weights", True):
        problems.append("scale_attn_weights=False")
    if config.get("scale_attn_by_inverse_layer_idx"):
        problems.append("scale_attn_by_inverse_layer_idx")
    if config.get("add_cross_attention"):
        problems.append("add_cross_attention")
    return problems


def _rope(config: Mapping[str, Any]) -> dict[str, Any]:
    """The rotary settings of a config of transformers 5 (`rope_parameters`) or older
    (`rope_theta` and `rope_scaling`)."""
    rope = dict(config.get("rope_parameters") or {})
    scaling = dict(config.get("rope_scaling") or {})
    return {"rope_theta": config.get("rope_theta", 10000.0)} | scaling | rope


def trunk_options(config: Mapping[str, Any]) -> dict[str, Any]:
    """Our `decoder` trunk options from a Hugging Face config (dict), after `check_config`."""
    check_config(config)
    if config["model_type"] in GPT2_TYPES:
        hidden = config.get("n_embd", 768)
        return {
            "arch": "gpt2",
            "vocab_size": config.get("vocab_size", 50257),
            "hidden_size": hidden,
            "num_layers": config.get("n_layer", 12),
            "num_heads": config.get("n_head", 12),
            "num_kv_heads": 0,
            "head_dim": 0,
            "intermediate_size": config.get("n_inner") or 4 * hidden,
            "max_position_embeddings": config.get("n_positions", 1024),
            "norm_eps": config.get("layer_norm_epsilon", 1e-5),
            "qkv_bias": True,
            "output_bias": True,
            "mlp_bias": True,
            "tie_embeddings": config.get("tie_word_embeddings", True),
            "dropout": config.get("resid_pdrop", 0.1),
            "attention_dropout": config.get("attn_pdrop", 0.1),
        }
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    qwen2 = config["model_type"] == "qwen2"
    attention_bias = config.get("attention_bias", False)
    return {
        "arch": "llama",
        "vocab_size": config["vocab_size"],
        "hidden_size": hidden,
        "num_layers": config["num_hidden_layers"],
        "num_heads": heads,
        "num_kv_heads": config.get("num_key_value_heads") or heads,
        "head_dim": config.get("head_dim") or hidden // heads,
        "intermediate_size": config["intermediate_size"],
        "max_position_embeddings": config.get("max_position_embeddings", 2048),
        "norm_eps": config.get("rms_norm_eps", 1e-6),
        "rope_theta": float(_rope(config)["rope_theta"]),
        "sliding_window": 0 if qwen2 else config.get("sliding_window") or 0,
        "qkv_bias": qwen2 or attention_bias,  # Qwen2: biases on q, k and v only
        "output_bias": attention_bias,
        "mlp_bias": config.get("mlp_bias", False),
        "tie_embeddings": config.get("tie_word_embeddings", False),
        "dropout": 0.0,
        "attention_dropout": float(config.get("attention_dropout", 0.0)),
    }


def layout(config: Mapping[str, Any]) -> Layout:
    """The table for a checkpoint of this config."""
    return GPT2 if config.get("model_type") in GPT2_TYPES else LLAMA


# --- building trunks -----------------------------------------------------------------------


def read_config(hf_dir: str) -> dict[str, Any]:
    """The checkpoint's config.json, checked to be a model the decoder trunk implements."""
    if not os.path.isdir(hf_dir):
        raise DataError(f"The checkpoint directory {hf_dir} does not exist.")
    path = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(path):
        raise DataError(
            f"{hf_dir} has no config.json: point at a Hugging Face model directory (as written "
            "by `save_pretrained`), holding config.json and model.safetensors."
        )
    with open(path) as f:
        config = json.load(f)
    check_config(config, path)
    return config


def load_decoder(hf_dir: str, *, drop: Iterable[str] = (), **options: Any) -> nnx.Module:
    """A `decoder` trunk with the weights of a Hugging Face directory (safetensors, no torch).

    `options` override trunk options (say `dtype="bfloat16"`, `dropout=0.0`); `drop` are
    regexes of checkpoint tensors to leave out on purpose."""
    config = read_config(hf_dir)
    return build(config, read_weights(hf_dir), drop=drop, **options)


def decoder_from_torch(model: Any, *, drop: Iterable[str] = (), **options: Any) -> nnx.Module:
    """A `decoder` trunk with the weights of a `transformers` PyTorch model object."""
    config = model.config.to_dict()
    check_config(config, where=type(model).__name__)
    return build(config, state_dict_of_tensors(model.state_dict()), drop=drop, **options)


def build(
    config: Mapping[str, Any],
    weights: Mapping[str, Any],
    *,
    drop: Iterable[str] = (),
    **options: Any,
) -> nnx.Module:
    """A `decoder` trunk with the options of `config` (+ `options`) and the converted `weights`.

    Nothing is randomly initialised (`mtl.convert.table.build_trunk`).
    """
    from mtl.models.trunks.decoder import Decoder

    table = layout(config)
    trunk_opts = trunk_options(config)
    names = {table.normalize(name) for name in weights}
    if not trunk_opts["tie_embeddings"] and "lm_head.weight" not in names:
        trunk_opts["lm_head"] = False  # a bare LlamaModel: no head to convert
    trunk_opts |= dict(options)
    make = lambda: Decoder((), rngs=nnx.Rngs(0), **trunk_opts)
    # The shapes follow config.json except where `options` override it: name only those fields.
    from_json = {k: v for k, v in config.items() if k not in options}
    return build_trunk(make, table, weights, drop=drop, config=from_json)
