"""Trunks: the shared part of a multi-task model.

Each trunk is one file in this package that registers a factory in `TRUNKS`:

    @TRUNKS.register("conv4")
    class Conv4(nnx.Module):
        def __init__(self, input_shape, *, filters=64, ..., rngs): ...
        out_features: int                         # width of the representation it returns
        def __call__(self, x, *, train: bool): ...  # -> [batch, out_features]

A trunk may also expose its stages, for the architectures that work between them
(cross-stitch, MTAN; `mtl/models/architectures/stages.py`):

        def stage_blocks(self): ...  # -> [block, ...], each block(h, train=...) -> h
        def pool(self, h): ...       # the last stage's output -> [batch, out_features]

Keyword options with defaults become config fields (`--config.model.conv4.filters=32`).
Every module in this package is imported below, so adding a trunk is adding one file. A module
may define `SHARDING_PRESETS = {name: rules}` for its trunk (`mtl.sharding`); they are
collected here.
"""

import importlib
import pkgutil

from mtl.registry import Registry

TRUNKS: Registry = Registry("trunk")

SHARDING_PRESETS: dict = {}

for _module in pkgutil.iter_modules(__path__):
    _loaded = importlib.import_module(f"{__name__}.{_module.name}")
    SHARDING_PRESETS.update(getattr(_loaded, "SHARDING_PRESETS", {}))
