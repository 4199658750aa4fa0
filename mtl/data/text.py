"""Text as array datasets: tokenise with a Hugging Face tokenizer into fixed-width int arrays.

The inputs of a text array dataset are a dict of [N, max_length] int32 arrays, as a BERT
tokenizer returns them (`input_ids`, `attention_mask`, `token_type_ids`). Everything in
`mtl.data.arrays` tree-maps over inputs, so batching, sharding and evaluation work unchanged.

Padding to `max_length` keeps shapes static for `jit`; `trim_padding` cuts a batch to its
longest sentence rounded up to a multiple (a handful of compiled shapes instead of one per
length), which on short-sentence tasks such as MPQA saves most of the compute.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from absl import logging

from mtl.errors import ConfigError, DataError

# A fast tokenizer is tokenizer.json; a BERT WordPiece vocabulary alone (vocab.txt) also works.
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")
# What to copy so that a directory is a complete tokenizer for `load_tokenizer`.
TOKENIZER_SIDE_FILES = ("tokenizer_config.json", "special_tokens_map.json", "config.json")


def check_tokenizer_dir(directory: str | None, field: str = "data.tokenizer_dir") -> str:
    """The directory holding the tokenizer (`directory` or its `tokenizer/` folder), else a
    `DataError` naming the missing file and the fix."""
    if not directory:
        raise ConfigError(
            f"No tokenizer directory: set --config.{field} (a converted checkpoint from "
            "`python -m launch.convert` holds its tokenizer)."
        )
    if not os.path.isdir(directory):
        raise DataError(f"The tokenizer directory {directory} does not exist (config {field}).")
    nested = os.path.join(directory, "tokenizer")  # a fine-tuning run's workdir keeps it there
    if not _has_tokenizer(directory) and _has_tokenizer(nested):
        return nested
    if not any(os.path.isfile(os.path.join(directory, f)) for f in TOKENIZER_FILES):
        raise DataError(
            f"{directory} holds no tokenizer: it needs {' or '.join(TOKENIZER_FILES)} (plus "
            f"{', '.join(TOKENIZER_SIDE_FILES[:2])}). Copy them from the Hugging Face model "
            f"directory, or convert it with `python -m launch.convert`, which copies them."
        )
    return directory


def _has_tokenizer(directory: str) -> bool:
    return any(os.path.isfile(os.path.join(directory, f)) for f in TOKENIZER_FILES)


def load_tokenizer(directory: str):
    """The Hugging Face tokenizer saved in `directory` (offline: no hub look-up)."""
    from transformers import AutoTokenizer  # heavy import, only for text runs

    directory = check_tokenizer_dir(directory)
    try:
        return AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - JSON, tokenizers and OS errors mean the same here
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        present = [
            f for f in (*TOKENIZER_FILES, *TOKENIZER_SIDE_FILES[:2]) if _exists(directory, f)
        ]
        raise DataError(
            f"The tokenizer in {directory} cannot be read ({type(e).__name__}: {first_line}): "
            f"one of {', '.join(present)} is damaged or truncated. Copy them again from the "
            "Hugging Face model directory, or convert it again with `python -m launch.convert`. "
            "Nothing was deleted."
        ) from None


def _exists(directory: str, name: str) -> bool:
    return os.path.isfile(os.path.join(directory, name))


def default_tokenizer_dir(data_config: Any, default: str | None) -> None:
    """Text data whose `tokenizer_dir` is unset reads `default`'s tokenizer (the checkpoint the
    trunk starts from, or a distillation teacher's workdir). Set in place, so the run's
    recorded config names the tokenizer it used."""
    if "tokenizer_dir" in data_config and not data_config.tokenizer_dir and default:
        data_config.tokenizer_dir = default


def same_tokenizer(a: str, b: str) -> bool:
    """Whether two tokenizer directories hold the same vocabulary files (byte for byte)."""
    import filecmp

    a, b = check_tokenizer_dir(a), check_tokenizer_dir(b)
    present = [[f for f in TOKENIZER_FILES if os.path.isfile(os.path.join(d, f))] for d in (a, b)]
    return present[0] == present[1] and all(
        filecmp.cmp(os.path.join(a, f), os.path.join(b, f), shallow=False) for f in present[0]
    )


def copy_tokenizer(source: str, destination: str) -> list[str]:
    """Copies the tokenizer files of `source` into `destination`; returns their names."""
    import shutil

    check_tokenizer_dir(source)
    os.makedirs(destination, exist_ok=True)
    copied = []
    for name in TOKENIZER_FILES + TOKENIZER_SIDE_FILES:
        if os.path.isfile(os.path.join(source, name)):
            shutil.copyfile(os.path.join(source, name), os.path.join(destination, name))
            copied.append(name)
    return copied


def tokenize(
    tokenizer: Any,
    sentences: Sequence[str],
    max_length: int,
    pairs: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """`{input_ids, attention_mask, token_type_ids}`: int32 [N, max_length], truncated, padded.
    With `pairs`, each example is the sentence pair `(sentences[i], pairs[i])`."""
    if not isinstance(max_length, int) or max_length < 2:
        raise ConfigError(f"max_length must be an int >= 2, got {max_length!r}.")
    if tokenizer.pad_token is None:
        # Decoder tokenizers (GPT-2, Llama) have none: pad with end-of-text, masked anyway.
        if tokenizer.eos_token is None:
            raise ConfigError(
                "The tokenizer has neither a padding nor an end-of-text token: add a pad_token "
                "to its tokenizer_config.json."
            )
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"  # the trunks read the last real token from the mask
    encoded = tokenizer(
        list(sentences),
        None if pairs is None else list(pairs),
        max_length=max_length,
        truncation=True,
        padding="max_length",
        return_tensors="np",
        return_token_type_ids=True,
        return_attention_mask=True,
    )
    return {
        k: np.asarray(encoded[k], np.int32)
        for k in ("input_ids", "attention_mask", "token_type_ids")
    }


def check_sentences(sentences: Sequence[Any]) -> list[str]:
    """The sentences as strings; an empty or missing one is a `DataError` naming its index."""
    out = []
    for i, sentence in enumerate(sentences):
        if sentence is None or not str(sentence).strip():
            raise DataError(f"Sentence {i} is empty: give every example some text, or drop it.")
        out.append(str(sentence))
    return out


def truncated(tokenizer: Any, sentences: Sequence[str], max_length: int) -> int:
    """How many sentences are longer than `max_length` tokens; logs a warning (with the
    first one) when any are, since their ends are cut off."""
    lengths = [len(ids) for ids in tokenizer(list(sentences), truncation=False)["input_ids"]]
    long = [i for i, n in enumerate(lengths) if n > max_length]
    if long:
        logging.warning(
            "%d of %d sentences are longer than the model's %d tokens and are cut to it "
            "(sentence %d has %d tokens). Raise data.max_length if their ends matter.",
            len(long), len(lengths), max_length, long[0], lengths[long[0]],
        )  # fmt: skip
    return len(long)


def trim_padding(
    inputs: Mapping[str, np.ndarray], multiple: int, *, keep_pad_column: bool = False
) -> dict[str, np.ndarray]:
    """Cuts [B, L] token arrays to the batch's longest sentence, rounded up to `multiple`.

    Padding positions change nothing for the real tokens (they are masked out of attention and
    of mean pooling), so this is exact; `multiple` <= 0 keeps the full width. With
    `keep_pad_column`, a cut batch keeps at least one padding column, so that it can be widened
    again by repeating its last column (`mtl.meta.model.join_examples`).
    """
    if multiple <= 0 or "attention_mask" not in inputs:
        return dict(inputs)
    width = inputs["attention_mask"].shape[1]
    longest = int(np.max(np.sum(inputs["attention_mask"] != 0, axis=1), initial=1))
    keep = min(width, -(-(longest + int(keep_pad_column)) // multiple) * multiple)
    return {k: v[:, :keep] for k, v in inputs.items()}


def text_dataset(
    inputs: Mapping[str, np.ndarray], label_field: str, labels: np.ndarray, fields: Sequence[str]
) -> dict[str, Any]:
    """An array dataset whose examples all carry `label_field`; the other `fields` are masked."""
    n = len(labels)
    if any(len(v) != n for v in inputs.values()):
        raise DataError(f"{label_field}: {n} labels but token arrays of other lengths.")
    return {
        "inputs": dict(inputs),
        "labels": {
            f: (np.asarray(labels, np.int32) if f == label_field else np.full(n, -1, np.int32))
            for f in fields
        },
        "masks": {f: np.full(n, f == label_field) for f in fields},
    }


def concatenate(datasets: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One array dataset with the examples of all `datasets` (same structure), in order."""
    import jax

    return jax.tree_util.tree_map(lambda *a: np.concatenate(a), *datasets)
