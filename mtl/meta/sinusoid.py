"""The sinusoid regression tasks of the MAML paper (Finn et al. 2017, section 5.1).

A task is y = A sin(x - phase) with the amplitude A drawn from [0.1, 5.0], the phase from
[0, pi] and the inputs x from [-5, 5], all uniformly. A learner sees K points of a new task
(K = 5 or 10 in the paper) and is scored by its mean squared error on other points of it.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from mtl.errors import ConfigError
from mtl.meta.episodes import Episodes

# Each split draws from its own stream, so meta-test tasks are never the training ones.
_SPLIT_STREAMS = {"train": 0, "val": 1, "test": 2}


@dataclasses.dataclass(frozen=True)
class SinusoidFamily:
    """Sinusoid tasks; `sample` has the signature of every episode family."""

    amplitude: tuple[float, float] = (0.1, 5.0)
    phase: tuple[float, float] = (0.0, math.pi)
    x_range: tuple[float, float] = (-5.0, 5.0)
    input_shape: tuple[int, ...] = (1,)

    def __post_init__(self):
        for name in ("amplitude", "phase", "x_range"):
            low, high = getattr(self, name)
            if not low < high:
                raise ConfigError(
                    f"data.{name} must be (low, high) with low < high, got {low, high}."
                )

    def num_classes(self, split: str) -> None:
        return None  # regression: no classes

    def check(self, split: str, ways: int, shots: int, queries: int) -> None:
        if ways != 1:
            raise ConfigError(
                f"Sinusoid tasks are regression: ways must be 1, got {ways} (config ways / "
                "eval.ways)."
            )
        if shots < 1 or queries < 1:
            raise ConfigError(f"shots and queries must be >= 1, got {shots} and {queries}.")

    def sample(
        self, split: str, seed: int, index: int, *, batch: int, ways: int, shots: int, queries: int
    ) -> Episodes:
        """`batch` tasks with `shots` support and `queries` query points each: x, y [B, n, 1]."""
        rng = np.random.default_rng([seed, _SPLIT_STREAMS[split], index])
        amp = rng.uniform(*self.amplitude, size=(batch, 1, 1))
        phase = rng.uniform(*self.phase, size=(batch, 1, 1))
        x = rng.uniform(*self.x_range, size=(batch, shots + queries, 1))
        y = amp * np.sin(x - phase)
        x, y = x.astype(np.float32), y.astype(np.float32)
        return {
            "support": {"x": x[:, :shots], "y": y[:, :shots]},
            "query": {"x": x[:, shots:], "y": y[:, shots:]},
        }

    def preprocess(self, x: np.ndarray) -> np.ndarray:
        """Inputs as given by a user: [n] or [n, 1] floats -> float32 [n, 1]."""
        x = np.asarray(x, np.float32)
        return x.reshape(-1, 1) if x.ndim == 1 else x
