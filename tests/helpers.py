"""Small builders shared by tests: toy tasks and data, a plain equal-weight method, and a
count of the matmuls XLA CPU leaves to its slow fallback."""

from __future__ import annotations

import re

import jax.numpy as jnp
import numpy as np

from mtl.tasks import tasks_from_config
from mtl.weighting.base import Weighting, weighted_update


def toy_tasks():
    """Three tasks: two classifications reading different fields, one regression."""
    return tasks_from_config(
        {
            "a": dict(head="classification", num_outputs=4),
            "b": dict(head="classification", num_outputs=3),
            "r": dict(head="regression", num_outputs=1),
        }
    )


def toy_batch(n: int, shape=(8, 8, 1), seed: int = 0) -> dict:
    """Random inputs; each example labelled for a random subset of the toy tasks."""
    rng = np.random.default_rng(seed)
    masks = {f: rng.random(n) < 0.6 for f in ("a", "b", "r")}
    labels = {
        "a": np.where(masks["a"], rng.integers(0, 4, n), -1).astype(np.int32),
        "b": np.where(masks["b"], rng.integers(0, 3, n), -1).astype(np.int32),
        "r": np.where(masks["r"], rng.normal(size=n), np.nan).astype(np.float32),
    }
    return {
        "inputs": rng.normal(size=(n, *shape)).astype(np.float32),
        "labels": labels,
        "masks": masks,
    }


def sum_of_losses() -> Weighting:
    """Equal weights, written here so step tests don't depend on the weighting package."""
    return Weighting(
        init=lambda num_tasks: {},
        update=lambda objective, state, rng: (
            weighted_update(objective, jnp.ones(len(objective.task_specific))),
            state,
        ),
    )


def doubly_transposed_dots(hlo_text: str) -> int:
    """Dots in compiled HLO that contract lhs dim 0 with rhs dim 1 (both operands transposed):
    the form XLA CPU's library kernels do not take (see mtl/models/dense.py)."""
    return len(re.findall(r"lhs_contracting_dims=\{0\}, rhs_contracting_dims=\{1\}", hlo_text))


def without_tensorflow(folder) -> dict[str, str]:
    """Environment variables under which `import tensorflow` fails in a subprocess (and in the
    process it restarts into): a package of that name that raises, first on PYTHONPATH."""
    import os
    import pathlib

    package = pathlib.Path(folder) / "tensorflow"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text('raise ImportError("TensorFlow is not installed here")\n')
    paths = [str(folder), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
