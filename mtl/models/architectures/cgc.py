"""CGC, Customized Gate Control (Tang et al. 2020, the one-level form of PLE): shared experts,
and per task experts of its own, a softmax gate over the shared and its own experts, and a
tower. A task's experts are task-specific parameters (its head), so the per-task gradient
methods see only the shared experts as shared, and each task's experts learn from its loss
alone. They are trunks, with their own batch-norm statistics (`model_state["heads"]`).
Multi-level PLE stacks such layers inside the trunk's stages and is not built.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
from flax import nnx

from mtl.errors import ConfigError
from mtl.models.architectures import ARCHITECTURES
from mtl.models.architectures import experts as ex
from mtl.models.architectures.mixture import SoftmaxGate
from mtl.models.heads import DenseHead


class CGCHead(nnx.Module):
    """A task's own experts (run on the raw inputs), a gate over the shared experts and its
    own, and a tower on the mixture."""

    def __init__(self, own: ex.Experts, gate: SoftmaxGate, source: str, tower: DenseHead):
        self.own, self.gate, self.source, self.tower = own, gate, source, tower

    def __call__(self, z: Sequence[jax.Array], *, inputs: Any = None, train: bool = False):
        experts = (*z, *self.own(inputs, train=train))
        weights = self.gate(ex.gate_features(self.source, inputs, experts))
        return self.tower(ex.mix(weights, experts))


@ARCHITECTURES.register("cgc")
def cgc(
    make_trunk,
    tasks,
    input_shape,
    *,
    num_experts: int = 2,
    task_experts: int = 1,
    gate_input: str = "auto",
    rngs,
):
    """`num_experts` shared trunks; per task `task_experts` trunks, a gate and a tower."""
    field = "model.architectures.cgc"
    if num_experts < 1 or task_experts < 1:
        raise ConfigError(
            f"{field}.num_experts and {field}.task_experts must be at least 1, got "
            f"{num_experts} and {task_experts}."
        )
    source = ex.gate_source(gate_input, input_shape, f"{field}.gate_input")
    shared = ex.Experts([make_trunk() for _ in range(num_experts)])
    width = ex.gate_width(source, input_shape, shared.out_features)
    heads = {
        t.name: CGCHead(
            ex.Experts([make_trunk() for _ in range(task_experts)]),
            SoftmaxGate(width, num_experts + task_experts, rngs=rngs),
            source,
            DenseHead(shared.out_features, t.num_outputs, hidden=t.head_hidden, rngs=rngs),
        )
        for t in tasks
    }
    return shared, heads
