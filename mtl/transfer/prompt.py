"""Prompt tuning (Lester et al. 2021): trainable vectors prepended to a frozen text trunk's input
embeddings; only they (and the heads) train.

`add_prompt(trunk, length=20, init="vocab", rngs=...)` gives a trunk that reads token embeddings
(`bert`, `decoder`: any trunk with a `prompt` attribute that its forward pass prepends) a
`SoftPrompt` of `length` vectors at `trunk/prompt/embedding`. Initialisation:

- `vocab`: copies of the embeddings of `length` distinct random vocabulary tokens (the paper's
  best initialisation for small models). The copy is taken from the trunk's word embeddings
  after a pretrained checkpoint is restored (`init_from_vocabulary`), not from the random ones.
- `random`: normal with the word embeddings' standard deviation.

The trunk's outputs ignore the prompt positions: pooling reads the real tokens only, so the
prompt acts as extra context every token attends to.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from mtl.errors import ConfigError

INITS = ("vocab", "random")
# The word-embedding table of the trunks that take prompts (bert, decoder), by parameter path.
WORD_EMBEDDINGS = (("embeddings", "word", "embedding"), ("embeddings", "token", "embedding"))


class SoftPrompt(nnx.Module):
    """`length` trainable vectors of the trunk's width."""

    def __init__(self, vectors: jax.Array):
        self.embedding = nnx.Param(jnp.asarray(vectors, jnp.float32))

    def __len__(self) -> int:
        return int(self.embedding.shape[0])


def add_prompt(trunk: nnx.Module, *, length: int, init: str, rngs: nnx.Rngs) -> list[str]:
    """Gives `trunk` a `SoftPrompt` of `length` vectors; returns `["prompt"]`."""
    if not hasattr(trunk, "prompt"):
        raise ConfigError(
            f"Prompt tuning needs a trunk that reads token embeddings (bert, decoder); the "
            f"{type(trunk).__name__} trunk has none (finetune.strategy=prompt_tuning)."
        )
    if not isinstance(length, int) or length < 1:
        raise ConfigError(f"finetune.prompt_tuning.length must be >= 1, got {length!r}.")
    if init not in INITS:
        raise ConfigError(
            f"finetune.prompt_tuning.init must be one of {', '.join(INITS)}, got {init!r}."
        )
    table = _word_table(nnx.to_pure_dict(nnx.state(trunk, nnx.Param)))
    std = jnp.std(table)
    trunk.prompt = SoftPrompt(std * jax.random.normal(rngs.params(), (length, table.shape[1])))
    return ["prompt"]


def init_from_vocabulary(trunk_params: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """`trunk_params` with the prompt set to copies of distinct random rows of its word
    embeddings (call after restoring pretrained weights)."""
    table = jnp.asarray(_word_table(trunk_params))
    length = trunk_params["prompt"]["embedding"].shape[0]
    if length > table.shape[0]:
        raise ConfigError(
            f"finetune.prompt_tuning.length={length} exceeds the vocabulary ({table.shape[0]})."
        )
    rows = jax.random.choice(jax.random.key(seed), table.shape[0], (length,), replace=False)
    return {**trunk_params, "prompt": {"embedding": table[rows]}}


def _word_table(params: Mapping[str, Any]) -> Any:
    for path in WORD_EMBEDDINGS:
        node: Any = params
        for key in path:
            node = node.get(key) if isinstance(node, Mapping) else None
        if node is not None:
            return node
    raise ConfigError("Prompt tuning found no word-embedding table in the trunk.")
