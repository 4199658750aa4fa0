"""The multi-task model: one shared trunk and a dict of heads keyed by task name."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
from flax import nnx

from mtl.errors import ConfigError
from mtl.models import precision as precisions
from mtl.models.architectures import ARCHITECTURES, HARD_SHARING
from mtl.models.heads import HEADS
from mtl.models.trunks import TRUNKS


class MultiTaskModel(nnx.Module):
    """`trunk(x)` is shared; `heads[task]` maps the representation to that task's outputs
    (in float32, whatever the trunk computes in). With an architecture other than hard
    sharing, `trunk` is its shared part (experts, columns, stages) and each head its task's
    part (`mtl.models.architectures`)."""

    def __init__(self, trunk: nnx.Module, heads: Mapping[str, nnx.Module]):
        self.trunk = trunk
        self.heads = nnx.Dict(dict(heads))

    def __call__(self, x: Any, *, train: bool = False) -> dict[str, jax.Array]:
        z = self.trunk(x, train=train)
        return {name: head(z, inputs=x, train=train) for name, head in self.heads.items()}


def default_config() -> ml_collections.ConfigDict:
    """`model.trunk` names the trunk; `model.<trunk>` holds each trunk's options;
    `model.architecture` how the tasks share it ("hps": hard parameter sharing), with each
    architecture's options in `model.architectures.<name>`."""
    config = TRUNKS.default_config("conv4", skip=("input_shape",), key="trunk")
    config.architecture = HARD_SHARING
    config.architectures = {name: ARCHITECTURES.options(name) for name in ARCHITECTURES}
    return config


def architecture_of(model_config: Mapping[str, Any]) -> str:
    """The configured architecture (`model.architecture`, "hps" when absent), checked."""
    name = model_config.get("architecture", HARD_SHARING)
    if name != HARD_SHARING:
        ARCHITECTURES.get(name, field="model.architecture")
    return name


def architecture_options(model_config: Mapping[str, Any]) -> dict[str, Any]:
    """The options of the configured architecture, checked against its builder."""
    name = architecture_of(model_config)
    if name == HARD_SHARING:
        return {}
    blocks = model_config.get("architectures") or {}
    return ARCHITECTURES.options_from(name, blocks.get(name), field=f"model.architectures.{name}")


def build_model(
    model_config: Mapping[str, Any],
    tasks: Sequence,
    input_shape: Sequence[int] | Mapping[str, Sequence[int]],
    seed: int,
    precision: str = "float32",
) -> MultiTaskModel:
    """Builds the trunk named by `model_config.trunk` (computing in `precision`, see
    `mtl.models.precision`) and one head per task."""
    name = model_config["trunk"]
    factory = TRUNKS.get(name, field="model.trunk")
    options = TRUNKS.options_from(name, model_config.get(name), field=f"model.{name}")
    options = precisions.trunk_options(name, options, precision)
    rngs = nnx.Rngs(seed)
    # Dict inputs (text: token arrays by name) give a dict of shapes.
    shape = dict(input_shape) if isinstance(input_shape, Mapping) else tuple(input_shape)
    architecture = architecture_of(model_config)
    if architecture != HARD_SHARING:
        if any(t.head == "causal_lm" for t in tasks):
            raise ConfigError(
                f"model.architecture={architecture} cannot serve causal_lm tasks (they read "
                "the decoder's own logits); use model.architecture=hps."
            )
        shared, heads = ARCHITECTURES.get(architecture)(
            lambda: factory(shape, rngs=rngs, **options),
            tasks,
            shape,
            rngs=rngs,
            **architecture_options(model_config),
        )
        return MultiTaskModel(shared, heads)
    trunk = factory(shape, rngs=rngs, **options)
    language = [t.name for t in tasks if t.head == "causal_lm"]
    if language:
        if not hasattr(trunk, "lm_outputs"):
            raise ConfigError(
                f"Task(s) {', '.join(language)} use the causal_lm head, which reads the trunk's "
                f"next-token logits; the {name} trunk has none (use model.trunk=decoder)."
            )
        trunk.lm_outputs = True  # the trunk returns its logits beside the pooled vector
    heads = {
        task.name: HEADS.get(task.head)(
            trunk.out_features, task.num_outputs, hidden=task.head_hidden, rngs=rngs
        )
        for task in tasks
    }
    return MultiTaskModel(trunk, heads)
