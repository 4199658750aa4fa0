"""Dropout whose keep mask costs half the random bits of `nnx.Dropout`'s.

`nnx.Dropout` draws one float32 uniform, 32 Threefry bits, per element. On CPU that draw is
most of dropout's cost, about a tenth of the BERT fine-tuning step (`benchmarks/finetune_step.py
--profile`), where attention dropout masks a [batch, heads, length, length] tensor in every
layer. Sixteen bits per element are plenty to decide keep or drop, so each 32-bit draw here
serves two elements (its high and low halves). The drop probability is the rate rounded to a
multiple of 1/65536 (0.1 becomes 0.1000061).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

_LEVELS = 1 << 16


def keep_mask(key: jax.Array, rate: float, shape: tuple[int, ...], out_sharding=None) -> jax.Array:
    """Boolean mask, True with probability `1 - round(rate * 2**16) / 2**16`, from 16-bit draws.

    Word j of a row gives element j its high half and element j + n/2 its low half: the mask is
    a [..., 2, n/2] broadcast of the words reshaped to [..., n], which XLA fuses into the
    comparison (a concatenation of the halves would be a copy of its own)."""
    *lead, last = shape
    half = -(-last // 2)
    words = jax.random.bits(key, (*lead, half), jnp.uint32, out_sharding=out_sharding)
    shifts = jnp.array([[16], [0]], jnp.uint32)
    halves = (words[..., None, :] >> shifts) & jnp.uint32(_LEVELS - 1)
    keep = (halves >= jnp.uint32(round(rate * _LEVELS))).reshape(*lead, 2 * half)
    return keep if 2 * half == last else keep[..., :last]


class Dropout(nnx.Dropout):
    """`nnx.Dropout` (same constructor, streams and scaling) with `keep_mask`'s 16-bit draws.

    Broadcast dimensions, an explicit `rngs` argument, the rates 0 and 1, and any call that is
    not explicitly non-deterministic take `nnx.Dropout`'s own path."""

    def __call__(self, inputs, *, deterministic: bool | None = None, rngs=None) -> jax.Array:
        deterministic = self.deterministic if deterministic is None else deterministic
        if (
            deterministic is not False  # True, or None: nnx.Dropout raises its own error
            or self.rate in (0.0, 1.0)
            or self.broadcast_dims
            or rngs is not None
            or not isinstance(self.rngs, nnx.RngStream)
        ):
            return super().__call__(inputs, deterministic=deterministic, rngs=rngs)
        keep = keep_mask(
            self.rngs(), self.rate, inputs.shape, out_sharding=jax.typeof(inputs).sharding
        )
        return lax.select(keep, inputs / (1.0 - self.rate), jnp.zeros_like(inputs))
