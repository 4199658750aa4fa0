"""What every meta-learning method implements, so that callers never ask which one they hold.

A method has two halves:

- its options (`MethodOptions`): a frozen dataclass registered by name in
  `mtl.meta.methods.METHODS`. Its fields and their defaults are the method's `config.meta`
  options, in one place; it checks them, says how wide a head the model needs, and builds
- the learner (`MetaLearner`): pure functions of (meta-parameters, BN state, episodes) that
  the train loop, the evaluation and the adapt/predict API (`mtl.meta.learner`) call.

Batch norm at test time follows `bn_test` (one of `BN_TEST`): "batch" normalises every forward
pass with its own batch (transductive, as MAML); "running" uses the running statistics
collected in meta-training, so predictions are per example.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import jax

from mtl.errors import ConfigError

PyTree = Any

BN_TEST = ("batch", "running")


def check_choice(field: str, value: Any, known: Sequence[str]) -> None:
    """A `ConfigError` naming `meta.<field>` unless `value` is one of `known`."""
    if value not in known:
        raise ConfigError(f"meta.{field} must be one of {', '.join(known)}, got {value!r}.")


@runtime_checkable
class MetaLearner(Protocol):
    """A meta-learner built by `MethodOptions.build`.

    `min_adapt_steps`: the fewest inner steps `adapt` needs (0: nothing adapts by gradient,
    as in ProtoNets; 1 for the MAML family). `head_per_episode`: whether the head is built for
    each episode, so any number of ways works. `bn_test`: batch norm at test time.
    """

    min_adapt_steps: int

    @property
    def head_per_episode(self) -> bool: ...

    @property
    def bn_test(self) -> str: ...

    def init(self, params: PyTree, state: PyTree) -> tuple[PyTree, PyTree]:
        """Meta-parameters and BN state from freshly built ones."""
        ...

    def meta_grads(
        self, meta: PyTree, state: PyTree, batch: PyTree, *, ways: int, step: jax.Array
    ) -> tuple[PyTree, dict]:
        """Mean meta-gradient (like `meta`) over a meta-batch, and `{"metrics", "state"}`."""
        ...

    def curve(
        self, meta: PyTree, state: PyTree, episode: PyTree, *, ways: int, steps: int
    ) -> jax.Array:
        """Query metric after 0..steps inner steps (ProtoNets: [1], steps ignored)."""
        ...

    def adapt(
        self, meta: PyTree, state: PyTree, support: PyTree, *, ways: int, steps: int, train_bn: bool
    ) -> tuple[PyTree, PyTree]:
        """`(adapted, trace)` for one support set `{"x", "y"}`: `adapted` is whatever
        `predict` needs (MAML: the adapted weights; ProtoNets: the support set itself)."""
        ...

    def predict(
        self,
        meta: PyTree,
        state: PyTree,
        adapted: PyTree,
        x: jax.Array,
        *,
        ways: int,
        steps: int,
        train_bn: bool,
    ) -> jax.Array:
        """Outputs for inputs `x` after `adapt`: logits [n, ways] or regression values [n, 1]."""
        ...


@runtime_checkable
class MethodOptions(Protocol):
    """A method's `config.meta` options (a frozen dataclass registered in `METHODS`)."""

    bn_test: str

    @property
    def head_per_episode(self) -> bool: ...

    def check(self, kind: str, head_hidden: Sequence[int] = ()) -> None:
        """A `ConfigError` naming the `meta.*` field that cannot work for `kind` episodes."""
        ...

    def num_outputs(self, kind: str, ways: int) -> int | None:
        """Width of the head the model needs (None: no head)."""
        ...

    def build(self, model: Any, params: PyTree, state: PyTree) -> MetaLearner:
        """The learner for `model` (made by `mtl.meta.model.build`)."""
        ...
