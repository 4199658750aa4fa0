"""NNX modules as pure functions of plain parameter dicts.

Anything that differentiates through parameters (train steps, per-task gradients, the MAML inner
loop) works on plain nested dicts of arrays: they checkpoint cleanly, their paths read like the
module attributes (`trunk/block0/conv/kernel`), and they compose with `jax.grad`, `jax.vmap`
and `jax.jit`. `PureModule` splits a module once into its graph definition and two dicts,
trainable parameters and other state (batch-norm statistics), and merges them back inside
`apply`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from flax import nnx

PyTree = Any


@dataclasses.dataclass(frozen=True)
class PureModule:
    """The static half of an NNX module; `apply` runs it on given parameters and state."""

    graphdef: nnx.GraphDef

    @classmethod
    def split(cls, module: nnx.Module) -> tuple[PureModule, PyTree, PyTree]:
        """Returns `(pure_module, params, state)` with `params`/`state` as plain dicts."""
        graphdef, params, state = nnx.split(module, nnx.Param, ...)
        return cls(graphdef), nnx.to_pure_dict(params), nnx.to_pure_dict(state)

    def merge(self, params: PyTree, state: PyTree) -> nnx.Module:
        """A module object with these parameters and state (for eager use or inspection)."""
        return nnx.merge(self.graphdef, params, state)

    def apply(self, params: PyTree, state: PyTree, *args, **kwargs) -> tuple[Any, PyTree]:
        """Calls the module; returns its output and the updated non-parameter state."""
        module = nnx.merge(self.graphdef, params, state)
        out = module(*args, **kwargs)
        _, _, new_state = nnx.split(module, nnx.Param, ...)
        return out, nnx.to_pure_dict(new_state)
