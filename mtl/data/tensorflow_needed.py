"""TensorFlow only where TFDS needs it: writing a data set, or reading TFRecord files.

The engine's run paths (training, benchmarks, conversion) do not import TensorFlow: prepared
Omniglot and SentEval are read from the arrays cached beside them, TensorBoard events are
written by TensorBoard's own writer. Preparing a TFDS data set still needs TensorFlow; without
it that step stops with one error saying so.
"""

from __future__ import annotations

from mtl.errors import DataError


def require_tensorflow(what: str, folder: str) -> None:
    """Raises `DataError` if TensorFlow cannot be imported; `what` needs it."""
    try:
        import tensorflow  # noqa: F401
    except ImportError as e:
        raise DataError(
            f"{what} needs TensorFlow, which cannot be imported here ({e}). Install it "
            "(pip install tensorflow-cpu), or prepare the data once on a machine that has it "
            f"and copy {folder} here: prepared data are read without TensorFlow."
        ) from None
