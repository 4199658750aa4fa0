"""`--precision` for the step benchmarks: ours with `config.precision`, the PyTorch peers
under `torch.autocast` (bfloat16 matmuls and convolutions, float32 parameters), the usual
mixed precision on each side."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from absl import flags

PRECISION = flags.DEFINE_list(
    "precision", ["float32"], "Precisions to time: float32 and/or bfloat16 (both sides)."
)
flags.FLAGS["precision"].allow_override = True


def autocast(precision: str):
    """A context under which a PyTorch step computes in `precision`."""
    import torch

    if precision == "float32":
        return contextlib.nullcontext()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.autocast(device_type=device, dtype=getattr(torch, precision))


def in_precision(run: Callable[[], None], precision: str) -> Callable[[], None]:
    """`run` (a PyTorch step) under `autocast(precision)`."""

    def wrapped() -> None:
        with autocast(precision):
            run()

    return wrapped
