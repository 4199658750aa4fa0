"""A decoder-only language model trunk: Llama-style or GPT-2, with a key-value cache.

One file for both families, chosen by `arch`:

- `llama` (also Mistral and Qwen2 checkpoints): RMSNorm before each block, rotary position
  embeddings (Hugging Face's `rotate_half` convention: the two halves of each head, not
  interleaved pairs), grouped-query attention (`num_kv_heads` key/value heads shared by
  `num_heads` query heads), a SwiGLU MLP `output(silu(gate_intermediate(x)) * intermediate(x))`,
  a final RMSNorm; the LM head tied to the token embedding or separate (`tie_embeddings`).
- `gpt2`: learned position embeddings, LayerNorm before each block, a GELU (tanh) MLP
  `output(gelu(intermediate(x)))`, a final LayerNorm, an LM head tied to the embedding.

Biases (`qkv_bias`, `output_bias`, `mlp_bias`) are independent options: GPT-2 has all of them,
Qwen2 only the first, Llama none (its `attention_bias` sets the first two).

Input is a dict of int arrays [batch, length]: `input_ids` and `attention_mask` (1 for tokens,
0 for padding), optionally `position_ids`. Without them a token's position is the number of
real tokens before it, so right- and left-padded batches give each real token the output it
would have alone. Attention is causal and never looks at padding.

- `encode(inputs)`: the hidden states after the final norm [batch, length, hidden];
- `logits(hidden)`: [batch, length, vocab] in float32;
- calling the module: the hidden state of each sequence's last real token [batch, hidden],
  what the engine's classification heads read;
- `init_cache` / `extend`: incremental decoding for `mtl.models.generate`.

Parameter paths follow the `bert` trunk, so LoRA's default targets, LLRD and gradual
unfreezing (which look for `layers/{i}/`) and sharding rules read them the same way:

    embeddings/word/embedding            token embedding [vocab, hidden]
    embeddings/position/embedding        learned positions [max_positions, hidden] (gpt2)
    layers/{i}/attention/norm/scale      the norm before attention (and /bias for gpt2)
    layers/{i}/attention/query|key|value|output/kernel
    layers/{i}/norm/scale                the norm before the MLP
    layers/{i}/gate_intermediate/kernel  SwiGLU gate (llama)
    layers/{i}/intermediate/kernel       the MLP's up projection
    layers/{i}/output/kernel             the MLP's down projection
    norm/scale                           the final norm
    lm_head/kernel                       [hidden, vocab], only when not tied

The gate is `gate_intermediate`, not `gate`, so that LoRA's default targets
`(query|key|value|output|intermediate)$` adapt all seven linears of a block.

`dtype="bfloat16"` runs activations and matmuls in bfloat16 with float32 parameters; attention
scores and softmax, norm statistics, rotary angles and logits stay float32. `remat=True`
recomputes each block's activations in the backward pass (`nnx.remat`): memory for compute.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from mtl.errors import ConfigError
from mtl.models.dense import Dense
from mtl.models.dropout import Dropout
from mtl.models.remat import remat_call
from mtl.models.trunks import TRUNKS
from mtl.models.trunks.bert import _lookup

ARCHS = ("llama", "gpt2")

# Both families initialise every weight from N(0, 0.02); only matters from scratch.
_INIT = nnx.initializers.normal(0.02)


class KVCache(NamedTuple):
    """The keys and values of the tokens seen so far, for incremental decoding (a pytree).

    Slots are filled left to right, the same slot for every row, so one `index` serves the
    batch; `mask` says which slots hold real tokens (prompts padded on the left leave padding
    slots), `positions` how many real tokens each row has seen (the next token's position).
    """

    keys: tuple[jax.Array, ...]  # per layer [batch, max_length, kv_heads, head_dim]
    values: tuple[jax.Array, ...]  # per layer, as keys
    mask: jax.Array  # [batch, max_length] bool: the slot holds a real token
    positions: jax.Array  # [batch] int32
    index: jax.Array  # int32 scalar: the next free slot


def _dense(cin: int, cout: int, use_bias: bool, dtype, rngs: nnx.Rngs) -> Dense:
    return Dense(cin, cout, use_bias=use_bias, kernel_init=_INIT, dtype=dtype, rngs=rngs)


def _norm(arch: str, features: int, eps: float, dtype, rngs: nnx.Rngs) -> nnx.Module:
    if arch == "llama":
        return nnx.RMSNorm(features, epsilon=eps, dtype=dtype, rngs=rngs)
    return nnx.LayerNorm(features, epsilon=eps, dtype=dtype, rngs=rngs)


def rotary(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos and sin [batch, length, head_dim] (float32) of the rotary angles at `positions`.

    Frequency j (of head_dim / 2) turns by `position * theta**(-2j / head_dim)`; both halves of
    a head share the frequencies, as Hugging Face's `rotate_half` expects."""
    inv_freq = theta ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """`x * cos + rotate_half(x) * sin` for x [batch, length, heads, head_dim], in float32."""
    half = x.shape[-1] // 2
    x32 = x.astype(jnp.float32)
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    return (x32 * cos[:, :, None] + rotated * sin[:, :, None]).astype(x.dtype)


class Attention(nnx.Module):
    """Pre-norm causal self-attention with grouped-query heads and its residual."""

    def __init__(
        self,
        arch,
        hidden,
        num_heads,
        num_kv_heads,
        head_dim,
        qkv_bias,
        output_bias,
        eps,
        dropout,
        attention_dropout,
        dtype,
        rngs,
    ):
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.norm = _norm(arch, hidden, eps, dtype, rngs)
        self.query = _dense(hidden, num_heads * head_dim, qkv_bias, dtype, rngs)
        self.key = _dense(hidden, num_kv_heads * head_dim, qkv_bias, dtype, rngs)
        self.value = _dense(hidden, num_kv_heads * head_dim, qkv_bias, dtype, rngs)
        self.output = _dense(num_heads * head_dim, hidden, output_bias, dtype, rngs)
        self.attention_dropout = Dropout(attention_dropout, rngs=rngs)
        self.dropout = Dropout(dropout, rngs=rngs)

    def __call__(
        self,
        x: jax.Array,
        rope: tuple[jax.Array, jax.Array] | None,
        allowed: jax.Array,
        kv: tuple[jax.Array, jax.Array] | None,
        index: jax.Array | int,
        *,
        train: bool,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        """`x + attention(norm(x))`, and the cache's keys and values with this call's written.

        `allowed` [batch, length, keys] says which keys each query may see (causal, not
        padding). Without a cache (`kv` None) the keys are this call's tokens; with one they
        are the cache's slots after writing this call's keys at slot `index`.
        """
        batch, length, _ = x.shape
        h = self.norm(x)
        q = self.query(h).reshape(batch, length, self.num_heads, self.head_dim)
        k = self.key(h).reshape(batch, length, self.num_kv_heads, self.head_dim)
        v = self.value(h).reshape(batch, length, self.num_kv_heads, self.head_dim)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        if kv is not None:
            at = (0, index, 0, 0)
            kv = (
                jax.lax.dynamic_update_slice(kv[0], k.astype(kv[0].dtype), at),
                jax.lax.dynamic_update_slice(kv[1], v.astype(kv[1].dtype), at),
            )
            k, v = kv
        # Query heads grouped by the key/value head they share: head j reads kv head j // group.
        group = self.num_heads // self.num_kv_heads
        q = q.reshape(batch, length, self.num_kv_heads, group, self.head_dim)
        scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32)
        scores = scores / math.sqrt(self.head_dim)
        # The lowest finite score, not -inf: a query with no key to see (a padding slot of a
        # left-padded prompt) gets a uniform row instead of NaN, and its output is never read.
        scores = jnp.where(allowed[:, None, None], scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1)
        probs = self.attention_dropout(probs, deterministic=not train).astype(v.dtype)
        context = jnp.einsum("bkgts,bskd->btkgd", probs, v)
        context = context.reshape(batch, length, self.num_heads * self.head_dim)
        return x + self.dropout(self.output(context), deterministic=not train), kv


class Layer(nnx.Module):
    """One block: attention, then the pre-norm MLP (SwiGLU for llama, GELU for gpt2)."""

    def __init__(self, arch, hidden, intermediate, mlp_bias, eps, dropout, dtype, rngs, **attn):
        self.attention = Attention(
            arch, hidden, eps=eps, dropout=dropout, dtype=dtype, rngs=rngs, **attn
        )
        self.norm = _norm(arch, hidden, eps, dtype, rngs)
        self.gate_intermediate = (
            _dense(hidden, intermediate, mlp_bias, dtype, rngs) if arch == "llama" else None
        )
        self.intermediate = _dense(hidden, intermediate, mlp_bias, dtype, rngs)
        self.output = _dense(intermediate, hidden, mlp_bias, dtype, rngs)
        self.dropout = Dropout(dropout, rngs=rngs)

    def mlp(self, x: jax.Array) -> jax.Array:
        if self.gate_intermediate is not None:
            return self.output(jax.nn.silu(self.gate_intermediate(x)) * self.intermediate(x))
        return self.output(jax.nn.gelu(self.intermediate(x), approximate=True))

    def __call__(self, x, rope, allowed, kv, index, *, train: bool):
        x, kv = self.attention(x, rope, allowed, kv, index, train=train)
        out = x + self.dropout(self.mlp(self.norm(x)), deterministic=not train)
        return out, kv


@TRUNKS.register("decoder")
class Decoder(nnx.Module):
    """A causal language model (see the module docstring). Defaults are SmolLM-135M's
    architecture (a small Llama: 30 layers of 576 features, 9 query and 3 key/value heads).

    `num_kv_heads=0` means as many as `num_heads` (plain multi-head attention; gpt2 needs
    that), `head_dim=0` means `hidden_size // num_heads`, `sliding_window=0` none (else a
    query sees only the `sliding_window` most recent tokens, itself included, as Mistral).
    `lm_head=False` builds no separate head for an untied model (a trunk for classification
    from a checkpoint without one, such as `LlamaModel`; `logits` then refuses).
    """

    def __init__(
        self,
        input_shape: Mapping[str, Sequence[int]] | Sequence[int] = (),
        *,
        arch: str = "llama",
        vocab_size: int = 49152,
        hidden_size: int = 576,
        num_layers: int = 30,
        num_heads: int = 9,
        num_kv_heads: int = 3,
        head_dim: int = 0,
        intermediate_size: int = 1536,
        max_position_embeddings: int = 2048,
        norm_eps: float = 1e-5,
        rope_theta: float = 10000.0,
        sliding_window: int = 0,
        qkv_bias: bool = False,
        output_bias: bool = False,
        mlp_bias: bool = False,
        tie_embeddings: bool = True,
        lm_head: bool = True,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        dtype: str = "float32",
        remat: bool = False,
        rngs: nnx.Rngs,
    ):
        num_kv_heads = num_kv_heads or num_heads
        head_dim = head_dim or (hidden_size // num_heads if num_heads else 0)
        _check_options(
            input_shape,
            arch,
            hidden_size,
            num_heads,
            num_kv_heads,
            head_dim,
            max_position_embeddings,
            dtype,
        )
        self.arch, self.dtype, self.remat = arch, jnp.dtype(dtype), remat
        self.head_dim, self.num_kv_heads = head_dim, num_kv_heads
        self.rope_theta, self.sliding_window = rope_theta, sliding_window
        self.max_position_embeddings = max_position_embeddings
        self.embeddings = Embeddings(
            arch, vocab_size, hidden_size, max_position_embeddings, dropout, self.dtype, rngs
        )
        self.layers = nnx.List(
            [
                Layer(
                    arch,
                    hidden_size,
                    intermediate_size,
                    mlp_bias,
                    norm_eps,
                    dropout,
                    self.dtype,
                    rngs,
                    num_heads=num_heads,
                    num_kv_heads=num_kv_heads,
                    head_dim=head_dim,
                    qkv_bias=qkv_bias,
                    output_bias=output_bias,
                    attention_dropout=attention_dropout,
                )
                for _ in range(num_layers)
            ]
        )
        self.norm = _norm(arch, hidden_size, norm_eps, self.dtype, rngs)
        # Tied: logits read the token embedding. Untied: a head of its own, when wanted.
        self.lm_head = (
            nnx.Linear(hidden_size, vocab_size, use_bias=False, kernel_init=_INIT, rngs=rngs)
            if not tie_embeddings and lm_head
            else None
        )
        self.tie_embeddings = tie_embeddings
        self.out_features = hidden_size
        self.prompt = nnx.data(None)  # a `SoftPrompt` under prompt tuning (mtl.transfer.prompt)
        # Set by `build_model` for causal_lm tasks: then calls return the logits as well.
        self.lm_outputs = False

    # --- full sequences ---------------------------------------------------------------------

    def encode(self, inputs: Mapping[str, jax.Array], *, train: bool = False) -> jax.Array:
        """Hidden states after the final norm [batch, length, hidden]."""
        return self._run(inputs, None, train=train)[0]

    def __call__(self, inputs: Mapping[str, jax.Array], *, train: bool = False) -> jax.Array:
        """The hidden state of each sequence's last real token [batch, hidden] (right or left
        padding alike)."""
        hidden = self.encode(inputs, train=train)
        pooled = self.pool(hidden, inputs)
        if self.lm_outputs:  # one pass serves the LM tasks and those reading the pooled vector
            return {"pooled": pooled, "logits": self.logits(hidden)}
        return pooled

    def pool(self, hidden: jax.Array, inputs: Mapping[str, jax.Array]) -> jax.Array:
        """The states `encode` returned, at each sequence's last real token [batch, hidden]."""
        return hidden[jnp.arange(hidden.shape[0]), last_real(inputs["attention_mask"])]

    def logits(self, hidden: jax.Array) -> jax.Array:
        """Next-token logits [..., vocab] in float32 (the matmul in `dtype`, summed in float32)."""
        if self.tie_embeddings:
            table = self.embeddings.word.embedding[...]
        elif self.lm_head is not None:
            table = self.lm_head.kernel[...].T
        else:
            raise ConfigError(
                "This decoder was built without an LM head (lm_head=False, tie_embeddings="
                "False): it has no logits. Build it with model.decoder.lm_head=True, or load a "
                "checkpoint that has lm_head.weight."
            )
        return jnp.einsum(
            "...d,vd->...v",
            hidden.astype(self.dtype),
            table.astype(self.dtype),
            preferred_element_type=jnp.float32,
        )

    # --- incremental decoding ---------------------------------------------------------------

    def init_cache(self, batch: int, max_length: int) -> KVCache:
        """An empty cache for `batch` sequences of up to `max_length` tokens in all, padding
        included. Every slot is kept (no rolling buffer, even with a sliding window); writing
        past `max_length` is not detected under `jit` (XLA clamps the slot), so size it for
        the prompts plus all new tokens, as `generate` does."""
        shape = (batch, max_length, self.num_kv_heads, self.head_dim)
        layers = len(self.layers)
        return KVCache(
            keys=tuple(jnp.zeros(shape, self.dtype) for _ in range(layers)),
            values=tuple(jnp.zeros(shape, self.dtype) for _ in range(layers)),
            mask=jnp.zeros((batch, max_length), bool),
            positions=jnp.zeros((batch,), jnp.int32),
            index=jnp.zeros((), jnp.int32),
        )

    def extend(self, inputs: Mapping[str, jax.Array], cache: KVCache) -> tuple[jax.Array, KVCache]:
        """Runs the next tokens [batch, new] after those in `cache` (a prompt, then one token
        at a time); their hidden states and the cache with their keys and values added.

        The tokens take slots `cache.index ...`; a padding token (mask 0) takes a slot that no
        later token attends to and does not advance its row's positions, which is how
        left-padded prompts are decoded. Works under `jax.jit` (the index may be traced)."""
        return self._run(inputs, cache, train=False)

    # --- the forward pass -------------------------------------------------------------------

    def _run(self, inputs, cache: KVCache | None, *, train: bool):
        ids = inputs["input_ids"]
        mask = inputs["attention_mask"].astype(bool)
        # A soft prompt (prompt tuning) goes before the tokens as embeddings of its own; its
        # states are dropped from the output.
        prompt = None if self.prompt is None else self.prompt.embedding[...]
        skip = 0 if prompt is None else prompt.shape[0]
        if skip and cache is not None:
            raise ConfigError(
                "Generation from a prompt-tuned decoder is not supported: the key-value cache "
                "does not hold the soft prompt. Use encode / logits on full sequences."
            )
        if skip:
            mask = jnp.concatenate([jnp.ones((ids.shape[0], skip), bool), mask], axis=1)
        length = ids.shape[1] + skip
        counts = jnp.cumsum(mask, axis=1, dtype=jnp.int32)
        if cache is None:
            start = 0
            positions = None if skip else inputs.get("position_ids")
            if positions is None:
                positions = jnp.maximum(counts - 1, 0)
            key_mask = mask
        else:
            start = cache.index
            positions = jnp.maximum(cache.positions[:, None] + counts - 1, 0)
            key_mask = jax.lax.dynamic_update_slice(cache.mask, mask, (0, start))
        allowed = self._allowed(start, length, key_mask)
        rope = rotary(positions, self.head_dim, self.rope_theta) if self.arch == "llama" else None
        h = self.embeddings(ids, positions, train=train, prompt=prompt)
        keys, values = [], []
        for i, layer in enumerate(self.layers):
            if cache is None:
                h = _block(self.remat, train)(layer, h, rope, allowed)
            else:
                kv = (cache.keys[i], cache.values[i])
                h, kv = layer(h, rope, allowed, kv, start, train=False)
                keys.append(kv[0])
                values.append(kv[1])
        h = self.norm(h)
        if cache is None:
            return h[:, skip:], None
        return h, KVCache(
            keys=tuple(keys),
            values=tuple(values),
            mask=key_mask,
            positions=cache.positions + counts[:, -1],
            index=cache.index + length,
        )

    def _allowed(self, start, length: int, key_mask: jax.Array) -> jax.Array:
        """[batch, length, keys]: query slot `start + t` sees key slot s <= it that holds a
        real token (and, with a sliding window, lies less than `sliding_window` before it).

        Slots stand for positions here: both run in steps of one over a row's real tokens when
        padding is only on the right (full sequences) or only on the left (generation)."""
        q = start + jnp.arange(length)[:, None]
        k = jnp.arange(key_mask.shape[1])[None, :]
        causal = k <= q
        if self.sliding_window:
            causal &= q - k < self.sliding_window
        return causal[None] & key_mask[:, None, :]


def _block(remat: bool, train: bool):
    """`layer(h, ...)` without a cache, rematerialised (`mtl.models.remat`) when asked."""

    def run(layer, h, rope, allowed):
        if remat:
            return remat_call(_Uncached(layer), h, rope, allowed, train=train)
        return layer(h, rope, allowed, None, 0, train=train)[0]

    return run


class _Uncached(nnx.Module):
    """A layer called without a cache, as one module for `remat_call`."""

    def __init__(self, layer: nnx.Module):
        self.layer = layer

    def __call__(self, h, rope, allowed, *, train: bool):
        return self.layer(h, rope, allowed, None, 0, train=train)[0]


class Embeddings(nnx.Module):
    """Token embeddings (+ learned positions for gpt2) and dropout, cast to `dtype`."""

    def __init__(self, arch, vocab_size, hidden, max_positions, dropout, dtype, rngs):
        self.word = nnx.Embed(vocab_size, hidden, embedding_init=_INIT, rngs=rngs)
        self.position = (
            nnx.Embed(max_positions, hidden, embedding_init=_INIT, rngs=rngs)
            if arch == "gpt2"
            else None
        )
        self.dropout = Dropout(dropout, rngs=rngs)
        self.dtype = dtype

    def __call__(
        self, ids: jax.Array, positions: jax.Array, *, train: bool, prompt=None
    ) -> jax.Array:
        """Embedded tokens; `prompt` [P, hidden] vectors go in front of the token embeddings
        (`positions` then cover both)."""
        h = _lookup(self.word.embedding[...], ids)
        if prompt is not None:
            front = jnp.broadcast_to(prompt.astype(h.dtype), (ids.shape[0], *prompt.shape))
            h = jnp.concatenate([front, h], axis=1)
        if self.position is not None:
            h = h + _lookup(self.position.embedding[...], positions)
        return self.dropout(h.astype(self.dtype), deterministic=not train)


def last_real(attention_mask: jax.Array) -> jax.Array:
    """[batch] index of each row's last real token (right or left padding; 0 if none)."""
    mask = attention_mask.astype(bool)
    length = mask.shape[1]
    return jnp.where(mask.any(axis=1), length - 1 - jnp.argmax(mask[:, ::-1], axis=1), 0)


def _check_options(
    input_shape, arch, hidden_size, num_heads, num_kv_heads, head_dim, max_positions, dtype
):
    """`ConfigError`s for options that cannot work, before anything is built."""
    if arch not in ARCHS:
        raise ConfigError(
            f"decoder arch must be one of {', '.join(ARCHS)}, got {arch!r} "
            "(config field model.decoder.arch)."
        )
    if dtype not in ("float32", "bfloat16"):
        raise ConfigError(
            f"decoder dtype must be float32 or bfloat16, got {dtype!r} "
            "(config field model.decoder.dtype)."
        )
    if num_heads < 1 or num_kv_heads < 1 or num_heads % num_kv_heads:
        raise ConfigError(
            f"decoder num_heads={num_heads} must be a positive multiple of num_kv_heads="
            f"{num_kv_heads} (config fields model.decoder.num_heads, model.decoder.num_kv_heads)."
        )
    if arch == "gpt2":
        if num_kv_heads != num_heads:
            raise ConfigError(
                f"GPT-2 has no grouped-query attention: set model.decoder.num_kv_heads to 0 or "
                f"num_heads={num_heads}, got {num_kv_heads}."
            )
        if hidden_size % num_heads or head_dim * num_heads != hidden_size:
            raise ConfigError(
                f"decoder (gpt2) hidden_size={hidden_size} must be num_heads={num_heads} x "
                f"head_dim={head_dim} (config fields model.decoder.hidden_size, num_heads, "
                "head_dim)."
            )
    if head_dim < 1 or (arch == "llama" and head_dim % 2):
        raise ConfigError(
            f"decoder head_dim={head_dim} must be positive (and even for rotary embeddings): "
            "set model.decoder.head_dim, or hidden_size and num_heads."
        )
    if isinstance(input_shape, Mapping):
        if "input_ids" not in input_shape or "attention_mask" not in input_shape:
            raise ConfigError(
                "The decoder trunk reads text: the data's inputs must be a dict with input_ids "
                f"and attention_mask (see mtl.data.text), got keys {sorted(input_shape)}."
            )
        length = input_shape["input_ids"][-1]
        if arch == "gpt2" and length > max_positions:
            raise ConfigError(
                f"Sequences of length {length} exceed the model's {max_positions} learned "
                "positions: lower --config.data.max_length."
            )
    elif input_shape:
        raise ConfigError(
            f"The decoder trunk reads text (a dict of token arrays), got inputs of shape "
            f"{tuple(input_shape)}: use a text data source (see mtl.data.text)."
        )


# Options that pretrained weights depend on: a checkpoint and the config must agree on them
# (dropout, dtype, remat and sliding_window are choices of the run).
ARCHITECTURE = (
    "arch",
    "vocab_size",
    "hidden_size",
    "num_layers",
    "num_heads",
    "num_kv_heads",
    "head_dim",
    "intermediate_size",
    "max_position_embeddings",
    "norm_eps",
    "rope_theta",
    "qkv_bias",
    "output_bias",
    "mlp_bias",
    "tie_embeddings",
)

# Sharding rules (the format of mtl.sharding) for this trunk's large matrices; `$` keeps LoRA
# factors out, and rules without `params/` also split the optimizer moments.
_LAYER = r"trunk/layers/\d+/"
SHARDING_PRESETS: dict[str, tuple[tuple[str, object], ...]] = {
    # ZeRO-3 style: each matrix split along its largest dimension the fsdp axis divides.
    "decoder_fsdp": (
        (r"trunk/(embeddings/(word|position)/embedding|lm_head/kernel)$", "fsdp"),
        (
            _LAYER
            + r"(attention/(query|key|value|output)|gate_intermediate|intermediate|output)/kernel$",
            "fsdp",
        ),
    ),
    # Megatron style: heads and MLP columns split over `model`, the output projections by rows
    # to match. The embedding and LM head are split over features, not the vocabulary, since
    # vocabularies (GPT-2's 50257) rarely divide evenly.
    "decoder_megatron": (
        (r"trunk/embeddings/(word|position)/embedding$", (None, "model")),
        (r"trunk/lm_head/kernel$", ("model", None)),
        (_LAYER + r"(attention/(query|key|value)|gate_intermediate|intermediate)/kernel$",
         (None, "model")),
        (_LAYER + r"(attention/(query|key|value)|gate_intermediate|intermediate)/bias$",
         ("model",)),
        (_LAYER + r"(attention/)?output/kernel$", ("model", None)),
    ),
}  # fmt: skip
