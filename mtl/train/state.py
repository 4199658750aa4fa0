"""The train state of every kind of run: one typed pytree that Orbax saves as it is.

    state = TrainState.create(params, model_state, optimizer, seed=0, losses=("a", "b"))
    state.step, state.params["trunk"], state.extras.get("affinity")

Fields are fixed; what a composed run adds (a task-affinity accumulator, a teacher's
variables) goes into `extras`, a mapping of named pytrees. `params` is what the optimizer
updates: the model's parameters in supervised runs, the meta-parameters (the initialisation
and any learned inner rates) in meta-learning. `method_state` is the state of the method that
turns losses into an update (a loss weighting's running values; empty for meta-learners).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

PyTree = Any


@struct.dataclass
class TrainState:
    """Step, parameters, model state (batch-norm statistics, dropout streams), optimizer state,
    RNG key, method state, the first non-finite step, and `extras` of composed runs."""

    step: jax.Array
    params: PyTree
    model_state: PyTree
    opt_state: PyTree
    rng: jax.Array
    method_state: PyTree
    # The first step whose loss or update was not finite (-1: none yet) and which of the named
    # losses were not; the loop checks it before it logs or saves, so no broken state is saved.
    nonfinite: dict[str, jax.Array]
    extras: dict[str, PyTree] = struct.field(default_factory=dict)

    @classmethod
    def create(
        cls,
        params: PyTree,
        model_state: PyTree,
        optimizer: optax.GradientTransformation,
        *,
        seed: int,
        losses: Sequence[str],
        method_state: PyTree = None,
        extras: Mapping[str, PyTree] | None = None,
    ) -> TrainState:
        """Step 0 with a fresh optimizer state; `losses` names what the non-finite flags mean."""
        return cls(
            step=jnp.zeros((), jnp.int32),
            params=params,
            model_state=model_state,
            opt_state=optimizer.init(params),
            rng=jax.random.key(seed),
            method_state={} if method_state is None else method_state,
            nonfinite={"step": jnp.int32(-1), "flags": jnp.zeros(len(losses), bool)},
            extras=dict(extras or {}),
        )

    def with_extras(self, **extras: PyTree) -> TrainState:
        """The same state with `extras` added or replaced."""
        return self.replace(extras={**self.extras, **extras})

    def advanced(
        self,
        params: PyTree,
        updates: PyTree,
        losses: jax.Array,
        **fields: Any,
    ) -> TrainState:
        """The state after one step: `params` (already updated by `updates`), the step counter
        moved on, the non-finite record kept up to date from `losses` and `updates`; `fields`
        replaces any other field (opt_state, model_state, method_state, ...)."""
        losses = jnp.atleast_1d(losses)
        finite = jnp.logical_and(jnp.all(jnp.isfinite(losses)), all_finite(updates))
        first_bad = jnp.logical_and(self.nonfinite["step"] < 0, ~finite)
        nonfinite = jax.tree.map(
            lambda new, old: jnp.where(first_bad, new, old),
            {"step": self.step + 1, "flags": ~jnp.isfinite(losses)},
            self.nonfinite,
        )
        return self.replace(step=self.step + 1, params=params, nonfinite=nonfinite, **fields)


def all_finite(tree: PyTree) -> jax.Array:
    """True when every element of every leaf of `tree` is finite."""
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves:
        return jnp.bool_(True)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))


def template(init: Callable[[], TrainState]) -> TrainState:
    """The abstract state (shapes and dtypes, no arrays) that `init` builds: what training
    compiles for, what a checkpoint is restored into and what `load_learner` reads."""
    return jax.eval_shape(init)
