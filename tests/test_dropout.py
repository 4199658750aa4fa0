"""The 16-bit dropout of the BERT trunk: its rate, its scaling, its randomness."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mtl.models.dropout import Dropout, keep_mask


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_drop_fraction_is_the_rate(rate):
    keep = np.asarray(keep_mask(jax.random.key(0), rate, (250, 4001)))  # odd last axis too
    dropped = 1.0 - keep.mean()
    sigma = np.sqrt(rate * (1 - rate) / keep.size)
    assert abs(dropped - round(rate * 65536) / 65536) < 5 * sigma
    # Both halves of each 32-bit draw are used, and independently: neither half is all kept.
    assert 1.0 - keep[:, :2000].mean() == pytest.approx(rate, abs=0.01)
    assert 1.0 - keep[:, 2001:].mean() == pytest.approx(rate, abs=0.01)


def test_kept_values_are_scaled_and_the_stream_advances():
    layer = Dropout(0.25, rngs=nnx.Rngs(dropout=3))
    x = jnp.ones((64, 512))
    first, second = layer(x, deterministic=False), layer(x, deterministic=False)
    np.testing.assert_allclose(np.unique(np.asarray(first)), [0.0, 1 / 0.75], rtol=1e-6)
    assert float(first.mean()) == pytest.approx(1.0, abs=0.02)  # the mean is preserved
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(layer(x, deterministic=True), x)


def test_same_seed_same_mask_under_jit():
    x = jnp.arange(4096.0).reshape(8, 512)

    @nnx.jit
    def apply(layer, x):
        return layer(x, deterministic=False)

    a = apply(Dropout(0.1, rngs=nnx.Rngs(dropout=7)), x)
    b = apply(Dropout(0.1, rngs=nnx.Rngs(dropout=7)), x)
    np.testing.assert_array_equal(a, b)


def test_no_deterministic_anywhere_is_refused_as_by_nnx():
    layer = Dropout(0.1, deterministic=None, rngs=nnx.Rngs(dropout=0))
    with pytest.raises(ValueError, match="No `deterministic` argument"):
        layer(jnp.ones((4, 4)))
