"""Dense: nnx.Linear's values and parameters, with a kernel gradient XLA CPU runs fast."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mtl.models.dense import Dense
from tests.helpers import doubly_transposed_dots


def _pair():
    return Dense(6, 5, rngs=nnx.Rngs(0)), nnx.Linear(6, 5, rngs=nnx.Rngs(0))


def test_same_parameters_values_and_gradients_as_linear():
    dense, linear = _pair()
    assert jax.tree.structure(nnx.state(dense)) == jax.tree.structure(nnx.state(linear))
    x = jax.random.normal(jax.random.key(1), (3, 4, 6))
    np.testing.assert_allclose(dense(x), linear(x), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dense(x[0]), linear(x[0]), rtol=1e-6, atol=1e-6)  # 2-D input

    def grads(module):
        return nnx.grad(lambda m, x: jnp.sum(jnp.sin(m(x))), argnums=(0, 1))(module, x)

    ours, theirs = jax.tree.leaves(grads(dense)), jax.tree.leaves(grads(linear))
    assert len(ours) == len(theirs) == 3  # bias, kernel, input
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _gradient_hlo(module) -> str:
    graph, params = nnx.split(module, nnx.Param)
    x = jnp.ones((8, 16, 6))

    def loss(params):
        return jnp.sum(nnx.merge(graph, params)(x) ** 2)

    return jax.jit(jax.grad(loss)).lower(params).compile().as_text()


def test_kernel_gradient_is_not_a_doubly_transposed_matmul():
    dense, linear = _pair()
    assert doubly_transposed_dots(_gradient_hlo(linear)) >= 1  # the form Dense exists to avoid
    assert doubly_transposed_dots(_gradient_hlo(dense)) == 0
