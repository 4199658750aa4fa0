"""Task heads: the task-specific part of a multi-task model.

A head maps the trunk's representation [batch, features] to the task's outputs
[batch, num_outputs]: class logits, per-label logits, or regression values. All three are a
dense layer (after optional hidden layers); they differ in the loss and metrics a task pairs
them with by default (`HEAD_DEFAULTS`), which the task config may override.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from mtl.models.gradient_reversal import gradient_reversal
from mtl.registry import Registry

HEADS: Registry = Registry("head")

# head name -> (default loss, default metrics)
HEAD_DEFAULTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "classification": ("softmax_cross_entropy", ("accuracy",)),
    "multilabel": ("sigmoid_cross_entropy", ("label_accuracy", "exact_match")),
    "regression": ("mse", ("mse", "mae")),
    # The trunk's own LM head over every position (decoder trunks): next-token prediction.
    "causal_lm": ("causal_lm", ("nll", "next_token_accuracy")),
}


class DenseHead(nnx.Module):
    """Optional hidden ReLU layers, then a linear layer to `num_outputs`."""

    def __init__(
        self, in_features: int, num_outputs: int, *, hidden: Sequence[int] = (), rngs: nnx.Rngs
    ):
        sizes = [in_features, *hidden]
        self.hidden = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
        )
        self.out = nnx.Linear(sizes[-1], num_outputs, rngs=rngs)

    def __call__(self, z: jax.Array, *, inputs=None, train: bool = False) -> jax.Array:
        """`inputs` and `train` are ignored here; heads of other architectures read them
        (`mtl.models.architectures`)."""
        if isinstance(z, Mapping):  # a trunk that also returns LM logits (causal_lm tasks)
            z = z["pooled"]
        z = z.astype(jnp.float32)  # heads and losses in float32 under bfloat16 (precision)
        for layer in self.hidden:
            z = nnx.relu(layer(z))
        return self.out(z)


class GradientReversalHead(DenseHead):
    """A classification head that reads the representation through a gradient-reversal layer
    (`mtl.models.gradient_reversal`): the head learns to classify, while the trunk below it
    receives the negated gradient, times `reversal_scale`, and so learns to defeat it.
    Domain-adversarial training (`trainer="dann"`) uses it as the domain classifier. Same
    parameters as `DenseHead`; `reversal_scale` is a static attribute the trainer sets before
    compiling."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.reversal_scale = 1.0

    def __call__(self, z: jax.Array, *, inputs=None, train: bool = False) -> jax.Array:
        return super().__call__(gradient_reversal(z, self.reversal_scale))


class CausalLMHead(nnx.Module):
    """A task that reads the trunk's own next-token logits [batch, length, vocab] (a decoder
    built with `lm_outputs`, which returns `{"pooled", "logits"}`); no parameters of its own."""

    def __init__(self, in_features: int, num_outputs: int, *, hidden=(), rngs=None):
        del in_features, num_outputs, hidden, rngs

    def __call__(self, z: Mapping[str, jax.Array], *, inputs=None, train=False) -> jax.Array:
        return z["logits"]


for _name in ("classification", "multilabel", "regression"):
    HEADS.register(_name)(DenseHead)
HEADS.register("causal_lm")(CausalLMHead)
HEAD_DEFAULTS["domain_adversarial"] = HEAD_DEFAULTS["classification"]
HEADS.register("domain_adversarial")(GradientReversalHead)
