"""conv4's two convolution forms compute the same function with the same parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from mtl.errors import ConfigError
from mtl.models.conv_ops import conv_matmul, patches
from mtl.models.functional import PureModule
from mtl.models.trunks.conv4 import Conv4
from tests.helpers import doubly_transposed_dots


@pytest.mark.parametrize("shape, stride", [((13, 11, 3), 2), ((7, 6, 4), 2), ((5, 5, 2), 1)])
def test_conv_matmul_matches_xla_same_convolution(shape, stride):
    x = jax.random.normal(jax.random.key(0), (2, *shape))
    k = jax.random.normal(jax.random.key(1), (3, 3, shape[-1], 5))
    ref = lax.conv_general_dilated(
        x,
        k,
        (stride, stride),
        "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision="highest",
    )
    np.testing.assert_allclose(conv_matmul(x, k, None, stride), ref, atol=1e-5)


@pytest.mark.parametrize("downsample, pooling", [("stride", "mean"), ("maxpool", "flatten")])
def test_conv4_forms_share_parameters_outputs_and_gradients(downsample, pooling):
    make = lambda conv: Conv4(
        (28, 28, 1),
        filters=8,
        downsample=downsample,
        pooling=pooling,
        conv=conv,
        rngs=nnx.Rngs(0),
    )
    xla, params, state = PureModule.split(make("xla"))
    matmul, params_m, _ = PureModule.split(make("matmul"))
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, params_m)  # same layout
    x = jax.random.uniform(jax.random.key(1), (16, 28, 28, 1))

    def loss(pure):
        return lambda p: jnp.mean(jnp.square(pure.apply(p, state, x, train=True)[0] - 0.5))

    np.testing.assert_allclose(
        matmul.apply(params, state, x, train=True)[0],
        xla.apply(params, state, x, train=True)[0],
        atol=1e-4,
    )
    g_xla, g_mm = jax.grad(loss(xla))(params), jax.grad(loss(matmul))(params)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5), g_xla, g_mm
    )


def test_unknown_conv_form_is_named():
    with pytest.raises(
        ConfigError, match=r"conv4 conv must be one of xla, matmul.*model.conv4.conv"
    ):
        Conv4((28, 28, 1), conv="im2col", rngs=nnx.Rngs(0))


def _kernel_gradient_hlo(conv) -> str:
    x = jnp.ones((4, 14, 14, 8))
    kernel = jnp.ones((3, 3, 8, 16))
    grad = jax.jit(jax.grad(lambda k: jnp.sum(conv(x, k) ** 2)))
    return grad.lower(kernel).compile().as_text()


def test_conv_matmul_kernel_gradient_is_a_plain_matmul():
    """The windows go to the matmul as rows (see mtl.models.dense), not as [B, H, W, taps]."""
    unflattened = lambda x, k: patches(x, (3, 3), 2) @ k.reshape(-1, k.shape[-1])  # noqa: E731
    # The form conv_matmul avoids:
    assert doubly_transposed_dots(_kernel_gradient_hlo(unflattened)) >= 1
    conv = lambda x, k: conv_matmul(x, k, None, 2)  # noqa: E731
    assert doubly_transposed_dots(_kernel_gradient_hlo(conv)) == 0
