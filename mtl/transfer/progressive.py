"""Progressive networks (Rusu et al., "Progressive Neural Networks", 2016), dense columns.

Column k has its own layers and, from its second layer on, lateral connections from the
previous layer of every earlier column (the paper's Eq. 1):

    h_l^(k) = relu(W_l^(k) h_{l-1}^(k) + sum_{j<k} U_l^(k:j) h_{l-1}^(j))

A new task gets a new column; the earlier columns are inputs, never trained again: the train
step differentiates with respect to the new column only, so the old ones stay bit-identical
and the old tasks keep their exact accuracy. Parameters are plain dicts (pure functions).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any


def _dense(key: jax.Array, fan_in: int, fan_out: int) -> jax.Array:
    return jax.random.normal(key, (fan_in, fan_out)) * np.sqrt(2.0 / fan_in)  # He init


def init_column(
    key: jax.Array, sizes: Sequence[int], num_classes: int, num_previous: int
) -> PyTree:
    """A column with hidden `sizes[1:]` on inputs of width `sizes[0]`, its own output layer,
    and laterals from `num_previous` earlier columns into every layer after the first."""
    layers = []
    keys = jax.random.split(key, 2 * len(sizes))
    for layer, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        lateral_keys = jax.random.split(keys[2 * layer + 1], max(num_previous, 1))
        layers.append(
            {
                "w": _dense(keys[2 * layer], fan_in, fan_out),
                "b": jnp.zeros(fan_out),
                # Laterals read the previous layer of each earlier column (none at layer 0).
                "laterals": [
                    _dense(k, fan_in, fan_out) * (layer > 0) for k in lateral_keys[:num_previous]
                ],
            }
        )
    head = {"w": _dense(keys[-1], sizes[-1], num_classes) * 0.5, "b": jnp.zeros(num_classes)}
    return {"layers": layers, "head": head}


def forward(columns: Sequence[PyTree], x: jax.Array) -> list[jax.Array]:
    """Output logits of every column on inputs `x` [B, ...] (flattened)."""
    h_prev = [x.reshape(x.shape[0], -1)] * len(columns)  # layer 0 reads the input
    num_layers = len(columns[0]["layers"])
    for layer in range(num_layers):
        h_next = []
        for k, column in enumerate(columns):
            p = column["layers"][layer]
            pre = h_prev[k] @ p["w"] + p["b"]
            if layer > 0:
                for j, u in enumerate(p["laterals"]):
                    pre = pre + h_prev[j] @ u
            h_next.append(jax.nn.relu(pre))
        h_prev = h_next
    return [h @ c["head"]["w"] + c["head"]["b"] for h, c in zip(h_prev, columns, strict=True)]


def new_column_logits(frozen: Sequence[PyTree], new: PyTree, x: jax.Array) -> jax.Array:
    """Logits of the `new` column; `frozen` columns get no gradient (stop_gradient)."""
    frozen = jax.lax.stop_gradient(list(frozen))
    return forward([*frozen, new], x)[-1]
