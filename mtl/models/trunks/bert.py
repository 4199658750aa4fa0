"""A BERT-family text encoder (Devlin et al. 2019) that takes Hugging Face BERT, RoBERTa and
DistilBERT weights.

Input is a dict of int arrays [batch, length] as a BERT tokenizer returns them:
`input_ids`, `attention_mask` (1 for tokens, 0 for padding) and optionally `token_type_ids`.
The output is one vector per sentence, pooled as configured:

- `mean`:   mean of the last hidden states over the real tokens (sentence-transformers' default,
            and how all-MiniLM-L6-v2 was trained),
- `cls`:    the last hidden state of the first ([CLS]) token,
- `pooler`: BERT's pooler, tanh(dense(CLS)), as `BertModel.pooler_output`.

Parameter paths read like the checkpoint's module names, so that conversion tables, sharding
rules and fine-tuning rules can name them: `layers/3/attention/query/kernel`,
`layers/3/intermediate/kernel`, `embeddings/word/embedding`. The whole mapping to Hugging Face
names is the table in `mtl.convert.hf_bert`.

Post-layer-norm blocks as in BERT: `x = norm(x + dropout(sublayer(x)))`.

`dtype="bfloat16"` runs activations and matmuls in bfloat16 with float32 parameters; attention
scores, softmax and layer-norm statistics stay float32. `remat=True` recomputes each layer's
activations in the backward pass instead of keeping them (less memory, one more forward).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from mtl.errors import ConfigError
from mtl.models.dense import Dense
from mtl.models.dropout import Dropout
from mtl.models.remat import remat_call
from mtl.models.trunks import TRUNKS

POOLINGS = ("mean", "cls", "pooler")
ACTIVATIONS = {
    # Hugging Face's "gelu" is the erf form. Written with `erf`, not `jax.nn.gelu(x, approximate
    # =False)`, whose `erfc` XLA CPU expands into costlier code; the two agree to 1e-6.
    "gelu": lambda x: 0.5 * x * (1.0 + lax.erf(x * (1.0 / math.sqrt(2.0)))),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}
TEXT_KEYS = ("input_ids", "attention_mask", "token_type_ids")

# BERT initialises every weight from N(0, 0.02) ("initializer_range"); only matters from scratch.
_INIT = nnx.initializers.normal(0.02)


def _dense(cin: int, cout: int, dtype, rngs: nnx.Rngs) -> Dense:
    return Dense(cin, cout, kernel_init=_INIT, dtype=dtype, rngs=rngs)


class Embeddings(nnx.Module):
    """Word + position (+ token-type) embeddings, layer norm, dropout.

    Positions count from 0, or, with `position_offset` > 0 (RoBERTa), real tokens count from
    `position_offset` and padding sits at `position_offset - 1` (RoBERTa's padding index).
    `type_vocab_size=0` (DistilBERT) builds no token-type table.
    """

    def __init__(
        self,
        vocab_size,
        hidden,
        max_positions,
        type_vocab_size,
        eps,
        dropout,
        dtype,
        rngs,
        position_offset=0,
    ):
        self.word = nnx.Embed(vocab_size, hidden, embedding_init=_INIT, dtype=dtype, rngs=rngs)
        self.position = nnx.Embed(
            max_positions, hidden, embedding_init=_INIT, dtype=dtype, rngs=rngs
        )
        self.token_type = (
            nnx.Embed(type_vocab_size, hidden, embedding_init=_INIT, dtype=dtype, rngs=rngs)
            if type_vocab_size
            else None
        )
        self.norm = nnx.LayerNorm(hidden, epsilon=eps, dtype=dtype, rngs=rngs)
        self.dropout = Dropout(dropout, rngs=rngs)
        self.position_offset = position_offset

    def __call__(
        self,
        ids: jax.Array,
        types: jax.Array,
        mask: jax.Array,
        *,
        train: bool,
        prompt: jax.Array | None = None,
    ) -> jax.Array:
        """Embedded tokens [batch, length, hidden]; with `prompt` [P, hidden] (prompt tuning),
        the prompt vectors take the place of word embeddings in front of the tokens:
        [batch, P + length, hidden], with positions (and token type 0) of their own. `mask`
        covers the tokens only."""
        words = _lookup(self.word.embedding[...], ids)
        if prompt is not None:
            batch, length = ids.shape[0], prompt.shape[0]
            front = jnp.broadcast_to(prompt.astype(words.dtype), (batch, *prompt.shape))
            words = jnp.concatenate([front, words], axis=1)
            mask = jnp.concatenate([jnp.ones((batch, length), mask.dtype), mask], axis=1)
            types = jnp.concatenate([jnp.zeros((batch, length), types.dtype), types], axis=1)
        table = self.position.embedding[...]
        if self.position_offset:
            counted = jnp.cumsum(mask, axis=1) * mask  # 1, 2, ... on real tokens, 0 on padding
            positions = _lookup(table, counted + (self.position_offset - 1))
        else:
            positions = table[: words.shape[1]][None]  # positions 0..L-1: a slice
        h = words + positions
        if self.token_type is not None:
            h = h + _lookup(self.token_type.embedding[...], types)
        return self.dropout(self.norm(h), deterministic=not train)


def _lookup(table: jax.Array, ids: jax.Array) -> jax.Array:
    """`table[ids]`; under a mesh with explicit axes the rows follow the sharding of `ids`
    (a gather's output sharding is otherwise ambiguous and JAX refuses it)."""
    sharding = jax.typeof(ids).sharding
    if not sharding.mesh.axis_names:
        return jnp.take(table, ids, axis=0)
    out = jax.sharding.NamedSharding(
        sharding.mesh, jax.sharding.PartitionSpec(*sharding.spec, None)
    )
    return table.at[ids].get(out_sharding=out)


class Attention(nnx.Module):
    """Multi-head self-attention with its output projection and post-norm residual."""

    def __init__(self, hidden, num_heads, eps, dropout, attention_dropout, dtype, rngs):
        self.num_heads = num_heads
        self.query = _dense(hidden, hidden, dtype, rngs)
        self.key = _dense(hidden, hidden, dtype, rngs)
        self.value = _dense(hidden, hidden, dtype, rngs)
        self.output = _dense(hidden, hidden, dtype, rngs)
        self.norm = nnx.LayerNorm(hidden, epsilon=eps, dtype=dtype, rngs=rngs)
        self.attention_dropout = Dropout(attention_dropout, rngs=rngs)
        self.dropout = Dropout(dropout, rngs=rngs)

    def __call__(self, x: jax.Array, key_mask: jax.Array, *, train: bool) -> jax.Array:
        batch, length, hidden = x.shape
        split = lambda t: t.reshape(batch, length, self.num_heads, hidden // self.num_heads)
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        # Scores and softmax in float32 whatever the compute dtype (bfloat16 sums lose the
        # small probabilities).
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
        scores = scores / math.sqrt(q.shape[-1])
        # Padding keys get the lowest finite score, as in Hugging Face (not -inf: a row of
        # padding only would give NaN), so even the states at padded positions match theirs.
        scores = jnp.where(key_mask[:, None, None, :], scores, jnp.finfo(scores.dtype).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        probs = self.attention_dropout(probs, deterministic=not train)
        context = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(batch, length, hidden)
        out = self.dropout(self.output(context), deterministic=not train)
        return self.norm(x + out)


class Layer(nnx.Module):
    """One encoder layer: attention, then the feed-forward block (`intermediate`, `output`)."""

    def __init__(
        self, hidden, num_heads, intermediate, eps, act, dropout, attn_dropout, dtype, rngs
    ):
        self.attention = Attention(hidden, num_heads, eps, dropout, attn_dropout, dtype, rngs)
        self.intermediate = _dense(hidden, intermediate, dtype, rngs)
        self.output = _dense(intermediate, hidden, dtype, rngs)
        self.norm = nnx.LayerNorm(hidden, epsilon=eps, dtype=dtype, rngs=rngs)
        self.dropout = Dropout(dropout, rngs=rngs)
        self.act = act

    def feed_forward(self, x: jax.Array, *, train: bool) -> jax.Array:
        """The block after attention: dense, activation, dense, dropout, residual, norm."""
        h = self.output(ACTIVATIONS[self.act](self.intermediate(x)))
        return self.norm(x + self.dropout(h, deterministic=not train))

    def __call__(self, x: jax.Array, key_mask: jax.Array, *, train: bool) -> jax.Array:
        return self.feed_forward(self.attention(x, key_mask, train=train), train=train)


@TRUNKS.register("bert")
class Bert(nnx.Module):
    """BERT encoder + pooling. Defaults are all-MiniLM-L6-v2's architecture.

    `encode` returns the last hidden states [batch, length, hidden_size] (what parity tests
    compare with `BertModel.last_hidden_state`); calling the module returns the pooled
    [batch, hidden_size] representation the heads read.
    """

    def __init__(
        self,
        input_shape: Mapping[str, Sequence[int]] | Sequence[int] = (),
        *,
        vocab_size: int = 30522,
        hidden_size: int = 384,
        num_layers: int = 6,
        num_heads: int = 12,
        intermediate_size: int = 1536,
        max_position_embeddings: int = 512,
        type_vocab_size: int = 2,
        layer_norm_eps: float = 1e-12,
        hidden_act: str = "gelu",
        dropout: float = 0.1,
        attention_dropout: float = 0.1,
        pooling: str = "mean",
        position_offset: int = 0,
        dtype: str = "float32",
        remat: bool = False,
        rngs: nnx.Rngs,
    ):
        _check_options(
            input_shape,
            hidden_size,
            num_heads,
            hidden_act,
            pooling,
            max_position_embeddings - position_offset,
        )
        dtype = jnp.dtype(dtype)
        self.embeddings = Embeddings(
            vocab_size,
            hidden_size,
            max_position_embeddings,
            type_vocab_size,
            layer_norm_eps,
            dropout,
            dtype,
            rngs,
            position_offset,
        )
        self.layers = nnx.List(
            [
                Layer(
                    hidden_size,
                    num_heads,
                    intermediate_size,
                    layer_norm_eps,
                    hidden_act,
                    dropout,
                    attention_dropout,
                    dtype,
                    rngs,
                )
                for _ in range(num_layers)
            ]
        )
        # The pooler exists only when used: frozen-but-unused weights would still be restored,
        # saved and (for full fine-tuning) given optimizer state for nothing.
        self.pooler = _dense(hidden_size, hidden_size, dtype, rngs) if pooling == "pooler" else None
        self.pooling = pooling
        self.out_features = hidden_size
        self.remat = remat
        self.max_positions = max_position_embeddings - position_offset
        self.prompt = nnx.data(None)  # a `SoftPrompt` under prompt tuning (mtl.transfer.prompt)

    def encode(self, inputs: Mapping[str, jax.Array], *, train: bool = False) -> jax.Array:
        """Last hidden states [batch, length, hidden] of the tokens (the states at a soft
        prompt's positions, which every token attends to, are left out)."""
        ids = inputs["input_ids"]
        types = inputs.get("token_type_ids")
        types = jnp.zeros_like(ids) if types is None else types
        mask = inputs["attention_mask"]
        prompt = None if self.prompt is None else self.prompt.embedding[...]
        if prompt is not None and ids.shape[1] + prompt.shape[0] > self.max_positions:
            raise ConfigError(
                f"{ids.shape[1]} tokens + a prompt of {prompt.shape[0]} exceed the model's "
                f"{self.max_positions} positions: lower --config.data.max_length or "
                "finetune.prompt_tuning.length."
            )
        h = self.embeddings(ids, types, mask, train=train, prompt=prompt)
        skip = 0 if prompt is None else prompt.shape[0]
        if skip:
            mask = jnp.concatenate([jnp.ones((ids.shape[0], skip), mask.dtype), mask], axis=1)
        key_mask = mask.astype(bool)
        for layer in self.layers:
            if self.remat:  # recompute the layer's activations in the backward pass
                h = remat_call(layer, h, key_mask, train=train)
            else:
                h = layer(h, key_mask, train=train)
        return h[:, skip:]

    def __call__(self, inputs: Mapping[str, jax.Array], *, train: bool = False) -> jax.Array:
        h = self.encode(inputs, train=train)
        if self.pooling == "mean":
            mask = inputs["attention_mask"].astype(h.dtype)[..., None]
            return jnp.sum(h * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1.0)
        if self.pooling == "cls":
            return h[:, 0]
        return jnp.tanh(self.pooler(h[:, 0]))


def _check_options(input_shape, hidden_size, num_heads, hidden_act, pooling, max_positions):
    """`ConfigError`s for options that cannot work, before anything is built."""
    if pooling not in POOLINGS:
        raise ConfigError(
            f"bert pooling must be one of {', '.join(POOLINGS)}, got {pooling!r} "
            "(config field model.bert.pooling)."
        )
    if hidden_act not in ACTIVATIONS:
        raise ConfigError(
            f"bert hidden_act {hidden_act!r} is not supported (config field model.bert.hidden_act);"
            f" supported: {', '.join(ACTIVATIONS)}."
        )
    if hidden_size % num_heads:
        raise ConfigError(
            f"bert hidden_size={hidden_size} is not divisible by num_heads={num_heads} "
            "(config fields model.bert.hidden_size, model.bert.num_heads)."
        )
    if isinstance(input_shape, Mapping):
        if "input_ids" not in input_shape or "attention_mask" not in input_shape:
            raise ConfigError(
                "The bert trunk reads text: the data's inputs must be a dict with input_ids and "
                f"attention_mask (see mtl.data.text), got keys {sorted(input_shape)}."
            )
        length = input_shape["input_ids"][-1]
        if length > max_positions:
            raise ConfigError(
                f"Sequences of length {length} exceed the model's {max_positions} positions: "
                "lower --config.data.max_length."
            )
    elif input_shape:
        raise ConfigError(
            f"The bert trunk reads text (a dict of token arrays), got inputs of shape "
            f"{tuple(input_shape)}: use a text data source (see mtl.data.text)."
        )


# Options that pretrained weights depend on: a checkpoint and the config must agree on them
# (dropout and pooling are choices of the run).
ARCHITECTURE = (
    "vocab_size",
    "hidden_size",
    "num_layers",
    "num_heads",
    "intermediate_size",
    "max_position_embeddings",
    "type_vocab_size",
    "layer_norm_eps",
    "hidden_act",
    "position_offset",
)
