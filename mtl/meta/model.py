"""The network a meta-learner adapts: a trunk and one head, as pure functions of plain dicts.

    params = {"trunk": {...}, "head": {...}}      state = {"trunk": {...}}   # BN statistics

The trunk is any registered trunk (`config.model.trunk`); the head is a dense layer with
`num_outputs` = ways (classification) or 1 (regression). ProtoNets uses the trunk only.

Per-step batch norm (MAML++) gives every inner step its own batch-norm scale and bias and its
own running statistics: those leaves carry a leading axis of `steps + 1` entries, entry i
being used by the network after i inner steps (see `at_step`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mtl.errors import ConfigError
from mtl.models import precision as precisions
from mtl.models.architectures import HARD_SHARING
from mtl.models.functional import PureModule
from mtl.models.heads import HEADS
from mtl.models.trunks import TRUNKS
from mtl.transfer.lora import add_lora

PyTree = Any

# Trunk parameters that belong to batch norm sit next to the state leaves `mean` and `var`.
_BN_STATE = ("mean", "var")
_BN_PARAMS = ("scale", "bias")


@dataclasses.dataclass(frozen=True)
class MetaModel:
    """Static halves of the trunk and head; everything else is passed in."""

    trunk: PureModule
    head: PureModule | None
    kind: str  # "classification" | "regression"
    features: int  # width of the trunk's representation

    def embed(self, params: PyTree, state: PyTree, x: jax.Array, *, train: bool):
        """Trunk features [B, features] and the trunk's updated BN state."""
        z, new = self.trunk.apply(params["trunk"], state["trunk"], x, train=train)
        return precisions.float32(z), {"trunk": new}

    def outputs(self, head_params: PyTree, z: jax.Array) -> jax.Array:
        return self.head.apply(head_params, {}, z)[0]

    def loss(self, outputs: jax.Array, y: jax.Array) -> jax.Array:
        """Mean cross-entropy (labels int [B]) or mean squared error (targets [B, D])."""
        if self.kind == "classification":
            return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(outputs, y))
        return jnp.mean(jnp.square(outputs - y.reshape(outputs.shape)))

    def metric(self, outputs: jax.Array, y: jax.Array) -> jax.Array:
        """Accuracy (classification) or MSE (regression) of one episode."""
        if self.kind == "classification":
            return jnp.mean((jnp.argmax(outputs, -1) == y).astype(jnp.float32))
        return jnp.mean(jnp.square(outputs - y.reshape(outputs.shape)))


def build(
    model_config: Mapping[str, Any],
    kind: str,
    num_outputs: int | None,
    input_shape: tuple[int, ...],
    seed: int,
    precision: str = "float32",
    lora: tuple[int, float, str] | None = None,
) -> tuple[MetaModel, PyTree, PyTree]:
    """The trunk named by `model_config.trunk` plus a dense head (none if `num_outputs` is None);
    the trunk computes in `precision` (`mtl.models.precision`), features and head in float32.
    `lora = (rank, alpha, targets)` adds LoRA factors to the trunk's matching layers.

    Returns `(model, params, state)`.
    """
    name = model_config["trunk"]
    factory = TRUNKS.get(name, field="model.trunk")
    options = TRUNKS.options_from(name, model_config.get(name), field=f"model.{name}")
    options = precisions.trunk_options(name, options, precision)
    architecture = model_config.get("architecture", HARD_SHARING)
    if architecture != HARD_SHARING:
        raise ConfigError(
            f"model.architecture={architecture} is for multi-task training; meta-learning "
            "adapts one trunk and a head. Set --config.model.architecture=hps."
        )
    rngs = nnx.Rngs(seed)
    trunk = factory(_shape(input_shape), rngs=rngs, **options)
    if lora is not None:
        rank, alpha, targets = lora
        add_lora(trunk, rank=int(rank), alpha=float(alpha), targets=targets, rngs=rngs)
    pure_trunk, trunk_params, trunk_state = PureModule.split(trunk)
    params = {"trunk": trunk_params}
    pure_head = None
    if num_outputs is not None:
        hidden = tuple(model_config.get("head_hidden", ()) or ())
        head = HEADS.get(kind)(trunk.out_features, num_outputs, hidden=hidden, rngs=rngs)
        pure_head, params["head"], _ = PureModule.split(head)
    model = MetaModel(pure_trunk, pure_head, kind, int(trunk.out_features))
    return model, params, {"trunk": trunk_state}


def episode_mean(tree: PyTree) -> PyTree:
    """Means over the leading (episode) axis of metrics and batch-norm statistics; leaves that
    are not numbers to average (a dropout RNG key, counters) keep the first episode's."""

    def mean(a):
        if jnp.issubdtype(a.dtype, jnp.inexact):
            return jnp.mean(a, 0)
        return a[0]

    return jax.tree.map(mean, tree)


def join_examples(a: PyTree, b: PyTree) -> PyTree:
    """`a` and `b` concatenated along the example axis. Token arrays of different widths (the
    learner cuts padding per batch: `mtl.data.text.trim_padding`, which keeps a padding column
    when it cuts) are first widened to the wider one by repeating their last column."""

    def join(x, y):
        if x.ndim == 2 and x.shape[1] != y.shape[1]:
            width = max(x.shape[1], y.shape[1])
            x, y = (jnp.pad(v, ((0, 0), (0, width - v.shape[1])), mode="edge") for v in (x, y))
        return jnp.concatenate([x, y])

    return jax.tree.map(join, a, b)


def _shape(input_shape):
    """A tuple, or for text a dict of tuples (one per input array)."""
    if isinstance(input_shape, Mapping):
        return {k: tuple(v) for k, v in input_shape.items()}
    return tuple(input_shape)


def zero_head(features: int, num_outputs: int, dtype=jnp.float32) -> PyTree:
    """A dense head of zeros: every class starts equal, for any number of ways."""
    return {
        "out": {
            "kernel": jnp.zeros((features, num_outputs), dtype),
            "bias": jnp.zeros((num_outputs,), dtype),
        }
    }


def proto_head(z: jax.Array, y: jax.Array, ways: int) -> PyTree:
    """Proto-MAML's head (Triantafillou et al. 2020): logits = -|z - c_k|^2 up to a constant.

    With prototypes c_k (class means of the support features), -|z - c|^2 = 2 c.z - |c|^2
    - |z|^2, and the last term is the same for every class, so a dense layer with kernel 2c
    and bias -|c|^2 gives the ProtoNets classifier, which the inner loop then fine-tunes.
    """
    centers = class_means(z, y, ways)
    return {"out": {"kernel": 2.0 * centers.T, "bias": -jnp.sum(jnp.square(centers), -1)}}


def class_means(z: jax.Array, y: jax.Array, ways: int) -> jax.Array:
    """[ways, features] means of the rows of `z` [B, features] per label `y` int [B]."""
    onehot = jax.nn.one_hot(y, ways, dtype=z.dtype)
    return (onehot.T @ z) / jnp.maximum(onehot.sum(0), 1.0)[:, None]


def batch_norm_mask(params: PyTree, state: PyTree) -> PyTree:
    """Bool tree over `params`: True at batch-norm scale and bias leaves.

    A batch-norm layer is found by its running statistics: its parameters are the `scale`
    and `bias` next to a `mean` and `var` in the state.
    """
    parents = {
        path[:-1]
        for path, _ in jax.tree_util.tree_flatten_with_path(state)[0]
        if _key(path[-1]) in _BN_STATE
    }

    def is_bn(path, _leaf):
        return path[:-1] in parents and _key(path[-1]) in _BN_PARAMS

    return jax.tree_util.tree_map_with_path(is_bn, params)


def _key(entry) -> str:
    return str(getattr(entry, "key", getattr(entry, "idx", entry)))


def stack_steps(tree: PyTree, mask: PyTree | None, count: int) -> PyTree:
    """Gives the leaves selected by `mask` (all if None) a leading axis of `count` copies."""
    if mask is None:
        mask = jax.tree_util.tree_map(lambda _: True, tree)
    return jax.tree_util.tree_map(
        lambda leaf, m: jnp.broadcast_to(leaf, (count, *leaf.shape)) if m else leaf, tree, mask
    )


def at_step(tree: PyTree, mask: PyTree | None, step: jax.Array | int) -> PyTree:
    """Entry `step` (clamped to the last one) of the per-step leaves selected by `mask`."""
    if mask is None:
        return tree

    def pick(leaf, m):
        if not m:
            return leaf
        return leaf[jnp.minimum(step, leaf.shape[0] - 1)]

    return jax.tree_util.tree_map(pick, tree, mask)


def set_step(tree: PyTree, mask: PyTree, step: int, values: PyTree) -> PyTree:
    """`tree` with entry `step` of the per-step leaves replaced by `values`."""
    return jax.tree_util.tree_map(
        lambda leaf, m, v: leaf.at[min(step, leaf.shape[0] - 1)].set(v) if m else leaf,
        tree,
        mask,
        values,
    )


def check_head(kind: str, head_init: str, hidden) -> None:
    """Zero and prototype heads are single dense layers; a regression head must be learned."""
    if head_init not in ("learned", "zero", "proto"):
        raise ConfigError(
            f"meta.head_init must be 'learned', 'zero' or 'proto', got {head_init!r}."
        )
    if head_init != "learned" and hidden:
        raise ConfigError(
            f"meta.head_init={head_init!r} builds a single dense layer per episode, so "
            f"model.head_hidden must be empty (got {tuple(hidden)})."
        )
    if head_init == "proto" and kind != "classification":
        raise ConfigError("meta.head_init='proto' needs classification episodes.")
