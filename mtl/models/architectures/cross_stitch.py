"""Cross-stitch networks (Misra et al. 2016): one copy of the trunk per task (its column), and
after every stage a cross-stitch unit that replaces each column's features by a learned linear
combination of all columns' features: `h_t <- sum_s alpha[t, s] h_s`, one T x T matrix per
stage, initialised to `self_weight` on the diagonal and the rest shared equally (the paper's
(0.9, 0.1) for two tasks). Columns and units are all shared parameters (as LibMTL's
Cross_stitch); task t's head reads column t. The trunk must expose its stages (`stages.py`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mtl.errors import ConfigError
from mtl.models.architectures import ARCHITECTURES
from mtl.models.architectures.stages import require_stages
from mtl.models.heads import DenseHead


def initial_units(num_stages: int, num_tasks: int, self_weight: float) -> np.ndarray:
    """[stages, T, T]: `self_weight` on the diagonal, `(1 - self_weight) / (T - 1)` elsewhere."""
    other = (1.0 - self_weight) / (num_tasks - 1) if num_tasks > 1 else 0.0
    unit = np.full((num_tasks, num_tasks), other, np.float32)
    np.fill_diagonal(unit, self_weight if num_tasks > 1 else 1.0)
    return np.broadcast_to(unit, (num_stages, num_tasks, num_tasks)).copy()


class CrossStitch(nnx.Module):
    """T columns (trunks) with a cross-stitch unit after each stage; returns one
    representation per column."""

    def __init__(self, columns: list[nnx.Module], self_weight: float):
        self.columns = nnx.List(columns)
        stages = len(columns[0].stage_blocks())
        self.units = nnx.Param(jnp.asarray(initial_units(stages, len(columns), self_weight)))
        self.out_features = columns[0].out_features

    def __call__(self, x: Any, *, train: bool = False) -> tuple[jax.Array, ...]:
        blocks = [column.stage_blocks() for column in self.columns]
        hs = [x] * len(self.columns)
        for stage in range(len(blocks[0])):
            hs = [b[stage](h, train=train) for b, h in zip(blocks, hs, strict=True)]
            stacked = jnp.stack(hs)  # [T, batch, ...]
            unit = self.units[stage].astype(stacked.dtype)
            hs = list(jnp.tensordot(unit, stacked, axes=1))
        return tuple(column.pool(h) for column, h in zip(self.columns, hs, strict=True))


class ColumnHead(nnx.Module):
    """Task `index`'s tower on its own column's representation."""

    def __init__(self, index: int, tower: DenseHead):
        self.index, self.tower = index, tower

    def __call__(self, z, *, inputs: Any = None, train: bool = False) -> jax.Array:
        return self.tower(z[self.index])


@ARCHITECTURES.register("cross_stitch")
def cross_stitch(make_trunk, tasks, input_shape, *, self_weight: float = 0.9, rngs):
    """One column per task, cross-stitch units after every stage, a tower per task."""
    if not 0.0 <= self_weight <= 1.0:
        raise ConfigError(
            f"model.architectures.cross_stitch.self_weight must be in [0, 1], got {self_weight}."
        )
    columns = [make_trunk() for _ in tasks]
    require_stages(columns[0], "cross_stitch")
    shared = CrossStitch(columns, self_weight)
    heads = {
        t.name: ColumnHead(
            i, DenseHead(shared.out_features, t.num_outputs, hidden=t.head_hidden, rngs=rngs)
        )
        for i, t in enumerate(tasks)
    }
    return shared, heads
