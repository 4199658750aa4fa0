"""Text generation with a `decoder` trunk: one prefill call, then one token at a time.

    new = generate(trunk, input_ids, attention_mask, max_new_tokens=20)          # greedy
    new = generate(trunk, ids, mask, max_new_tokens=20, temperature=0.8, top_p=0.9,
                   key=jax.random.key(0))                                           # sampled

Both return the new tokens only, [batch, max_new_tokens] int32.

Padding: prompts of different lengths come as one padded batch with their `attention_mask`.
They are first moved to the right end of the row (`left_align`: left padding), whatever side
they were padded on, so that every row's next token goes into the same column: the prompt is
one `trunk.extend` call on an empty `KVCache`, and each new token one more call of length 1 at
the same slot for the whole batch. Positions count real tokens only, so a row's tokens are
those it would get alone (Hugging Face's `generate` does the same with left padding).

`generate` is one jitted function: the prefill, then a `lax.scan` over the new tokens, each
step feeding the previous token and reading one row of keys and values per layer from the
cache. `generate_reference` recomputes the whole sequence for every new token, without a
cache; tests use it to check the cache.

After a row emits `eos_token_id` its later tokens are `pad_token_id`. Sampling uses one key per
new token, `jax.random.split(key, max_new_tokens)`, in both functions, so they sample alike.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mtl.models.trunks.decoder import Decoder


def left_align(input_ids: jax.Array, attention_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Each row's real tokens moved to its end, in order, padding before them."""
    mask = attention_mask.astype(bool)
    order = jnp.argsort(mask, axis=1, stable=True)  # padding (False) first, order kept
    ids = jnp.take_along_axis(input_ids, order, axis=1)
    return jnp.where(jnp.sort(mask, axis=1), ids, 0), jnp.sort(mask, axis=1).astype(jnp.int32)


def sample(
    logits: jax.Array, key: jax.Array, *, temperature: float, top_k: int = 0, top_p: float = 1.0
) -> jax.Array:
    """Next tokens [batch] from logits [batch, vocab]: argmax if `temperature` is 0, else a
    draw from softmax(logits / temperature) restricted to the `top_k` most likely tokens
    (0: all) and to the smallest set whose probability reaches `top_p` (1.0: all)."""
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / temperature
    if top_k:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        ordered = jnp.sort(logits, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(ordered, axis=-1)
        # A token stays if the ones more likely than it hold less than top_p: the first always.
        before = jnp.cumsum(probs, axis=-1) - probs
        kept = jnp.where(before < top_p, ordered, jnp.inf)
        logits = jnp.where(logits < jnp.min(kept, axis=-1, keepdims=True), -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def generate(
    trunk: Decoder,
    input_ids: jax.Array,
    attention_mask: jax.Array,
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    key: jax.Array | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int = 0,
) -> jax.Array:
    """`max_new_tokens` new tokens per prompt [batch, max_new_tokens], with a `KVCache`."""
    keys = _keys(trunk, input_ids, max_new_tokens, temperature, key)
    ids, mask = left_align(jnp.asarray(input_ids), jnp.asarray(attention_mask))
    graphdef, state = nnx.split(trunk)
    return _generate(
        graphdef,
        nnx.to_pure_dict(state),
        ids,
        mask,
        keys,
        sampling=(float(temperature), int(top_k), float(top_p)),
        eos=(eos_token_id, pad_token_id),
    )


@functools.partial(jax.jit, static_argnames=("graphdef", "sampling", "eos"))
def _generate(graphdef, state, ids, mask, keys, *, sampling, eos):
    trunk = nnx.merge(graphdef, state)
    temperature, top_k, top_p = sampling
    pick = functools.partial(sample, temperature=temperature, top_k=top_k, top_p=top_p)
    batch, length = ids.shape
    steps = keys.shape[0]
    cache = trunk.init_cache(batch, length + steps)
    hidden, cache = trunk.extend({"input_ids": ids, "attention_mask": mask}, cache)
    first = pick(trunk.logits(hidden[:, -1]), keys[0])  # left-aligned: the last column is real

    def step(carry, key):
        token, cache = carry
        one = {"input_ids": token[:, None], "attention_mask": jnp.ones((batch, 1), jnp.int32)}
        hidden, cache = trunk.extend(one, cache)
        token = pick(trunk.logits(hidden[:, 0]), key)
        return (token, cache), token

    _, rest = jax.lax.scan(step, (first, cache), keys[1:])
    tokens = jnp.concatenate([first[:, None], rest.T], axis=1)
    return _after_eos(tokens, *eos)


def generate_reference(
    trunk: Decoder,
    input_ids: jax.Array,
    attention_mask: jax.Array,
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    key: jax.Array | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int = 0,
) -> jax.Array:
    """What `generate` returns, computed without a cache: for every new token the whole
    sequence so far goes through `trunk.encode` again (slow; a reference for tests).

    The sequence is held in a buffer of its final length so that one compiled forward pass
    serves every step; the columns not generated yet sit after the last real token and causal
    attention keeps them out of its logits."""
    keys = _keys(trunk, input_ids, max_new_tokens, temperature, key)
    ids, mask = left_align(jnp.asarray(input_ids), jnp.asarray(attention_mask))
    batch, length = ids.shape
    ids = jnp.concatenate([ids, jnp.zeros((batch, max_new_tokens), ids.dtype)], axis=1)
    mask = jnp.concatenate([mask, jnp.ones((batch, max_new_tokens), mask.dtype)], axis=1)
    graphdef, state = nnx.split(trunk)
    state = nnx.to_pure_dict(state)
    pick = functools.partial(sample, temperature=temperature, top_k=top_k, top_p=top_p)
    for t in range(max_new_tokens):
        token = pick(_logits_at(graphdef, state, ids, mask, length + t - 1), keys[t])
        ids = ids.at[:, length + t].set(token)
    return _after_eos(ids[:, length:], eos_token_id, pad_token_id)


@functools.partial(jax.jit, static_argnames="graphdef")
def _logits_at(graphdef, state, ids, mask, t):
    """The logits of column `t` [batch, vocab], from the whole sequence."""
    model = nnx.merge(graphdef, state)
    return model.logits(model.encode({"input_ids": ids, "attention_mask": mask})[:, t])


def _keys(trunk, input_ids, max_new_tokens: int, temperature: float, key) -> jax.Array:
    """One key per new token, after checking the arguments."""
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}.")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0: greedy), got {temperature}.")
    total = np.shape(input_ids)[1] + max_new_tokens
    if trunk.arch == "gpt2" and total > trunk.max_position_embeddings:
        raise ValueError(
            f"Prompts of {np.shape(input_ids)[1]} tokens and {max_new_tokens} new ones exceed "
            f"the model's {trunk.max_position_embeddings} learned positions: ask for fewer "
            "new tokens or shorten the prompts."
        )
    if temperature > 0 and key is None:
        raise ValueError("Sampling (temperature > 0) needs a key: key=jax.random.key(seed).")
    return jax.random.split(jax.random.key(0) if key is None else key, max_new_tokens)


def _after_eos(tokens: jax.Array, eos_token_id: int | None, pad_token_id: int) -> jax.Array:
    """`tokens` with everything after a row's first `eos_token_id` set to `pad_token_id`."""
    if eos_token_id is None:
        return tokens
    seen = jnp.cumsum(tokens == eos_token_id, axis=1) - (tokens == eos_token_id)
    return jnp.where(seen > 0, pad_token_id, tokens)
