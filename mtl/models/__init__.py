"""Models: trunks (one file each in `trunks/`), heads, and the multi-task model."""

from mtl.models.heads import HEAD_DEFAULTS, HEADS
from mtl.models.multitask import MultiTaskModel, build_model, default_config
from mtl.models.trunks import TRUNKS

__all__ = ["HEADS", "HEAD_DEFAULTS", "TRUNKS", "MultiTaskModel", "build_model", "default_config"]
