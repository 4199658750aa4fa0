"""`remat=True` recomputes each block's activations in the backward pass: the gradients must be
the ones without it."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mtl.models.functional import PureModule
from mtl.models.trunks.bert import Bert
from tests.conftest import TINY_BERT


def test_bert_remat_gives_the_same_gradients():
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(1000, 2000, (4, 10)), jnp.int32)
    mask = jnp.asarray(np.arange(10)[None] < np.array([10, 7, 3, 1])[:, None], jnp.int32)
    inputs = {"input_ids": ids, "attention_mask": mask}

    def grads(remat: bool):
        # Dropout on: the recomputed forward pass must draw the same masks.
        trunk = Bert((), rngs=nnx.Rngs(0), **TINY_BERT, remat=remat)
        pure, params, state = PureModule.split(trunk)

        def loss(p):
            out, new_state = pure.apply(p, state, inputs, train=True)
            return jnp.sum(jnp.square(out)), new_state

        return jax.jit(jax.grad(loss, has_aux=True))(params)[0]

    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        grads(False),
        grads(True),
    )
