"""Image files as model inputs, decoded when a batch needs them.

    spec = ImageSpec(size=28, channels=1, invert=True)
    images = LazyImages(np.array(["a.png", "b.jpg"], dtype=object), spec)
    images.shape                 # (2, 28, 28, 1): known without reading a file
    subset = images[np.array([1])]   # still lazy: indexing selects rows
    pixels = np.asarray(subset)      # decodes b.jpg: float32 [1, 28, 28, 1] in [0, 1]

Any size and mode (1-bit, palette, grayscale, RGB, RGBA, 16-bit) is converted to `channels`
(1: grayscale, 3: RGB) and resized to `size` x `size` with PIL's Lanczos filter, the filter of
the built-in Omniglot source, so the two give the same pixels. `check_files` fully decodes every
file once, in threads, before training starts: an unreadable or truncated file is one
`DataError` naming it, not a crash at step 40,000.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from PIL import Image

from mtl.errors import ConfigError, DataError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
Reader = Callable[[Any], Image.Image]  # an item (e.g. a record index) -> its image
_MODES = {1: "L", 3: "RGB"}


@dataclasses.dataclass(frozen=True)
class ImageSpec:
    """What every image becomes: `size` x `size` x `channels` float32 in [0, 1]; `invert` maps
    x to 1 - x (dark strokes on white, as Omniglot's, become 1 on 0)."""

    size: int = 28
    channels: int = 1
    invert: bool = False

    def __post_init__(self):
        if not isinstance(self.size, int) or self.size < 1:
            raise ConfigError(f"data.image_size must be a positive integer, got {self.size!r}.")
        if self.channels not in _MODES:
            raise ConfigError(
                f"data.channels must be 1 (grayscale) or 3 (RGB), got {self.channels!r}."
            )

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.size, self.size, self.channels)

    def convert(self, image: Image.Image) -> np.ndarray:
        """A PIL image in any mode -> float32 [size, size, channels]."""
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit: scale to 8 bits first
            image = Image.fromarray((np.asarray(image, np.float64) / 257.0).astype(np.uint8))
        transparent = image.mode in ("RGBA", "LA", "PA")
        if transparent or (image.mode == "P" and "transparency" in image.info):
            # Transparent pixels over white, as a viewer shows them.
            rgba = image.convert("RGBA")
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
        image = image.convert(_MODES[self.channels])
        if image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), Image.Resampling.LANCZOS)
        pixels = np.asarray(image, np.float32).reshape(self.shape) / 255.0
        return 1.0 - pixels if self.invert else pixels


def check_images(data: LazyImages) -> None:
    """`check_files` over every image of `data`."""
    check_files(data.paths.reshape(-1), reader=data.reader)


def decode_all(data: LazyImages, threads: int = 0) -> np.ndarray:
    """Every image of `data` decoded (in threads) into one float32 array: for data sets that
    fit in memory, decoded once instead of at every batch. A bad file is a `DataError`."""
    threads = threads or min(32, (os.cpu_count() or 1) * 4)
    flat = data.paths.reshape(-1)
    turns = np.zeros(len(flat), int) if data.quarter_turns is None else data.quarter_turns
    rows = zip(flat, np.asarray(turns).reshape(-1), strict=True)
    with ThreadPoolExecutor(threads) as pool:
        out = list(pool.map(lambda r: read_image(r[0], data.spec, int(r[1]), data.reader), rows))
    return np.stack(out).reshape(data.shape) if out else np.zeros(data.shape, np.float32)


def read_image(
    item: Any, spec: ImageSpec, quarter_turns: int = 0, reader: Reader | None = None
) -> np.ndarray:
    """The image `item` (a file path, or whatever `reader` opens) as float32 [size, size,
    channels], turned `quarter_turns` times."""
    try:
        with Image.open(item) if reader is None else reader(item) as image:
            pixels = spec.convert(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        where = item if reader is None else f"{item!r:.80} of {reader}"
        raise DataError(unreadable(where, err)) from None
    return np.rot90(pixels, quarter_turns) if quarter_turns else pixels


def unreadable(path: str, err: Exception) -> str:
    return (
        f"Cannot read the image {path}: {err}. The file is damaged, truncated or not an "
        f"image; replace it or delete it (images are PNG, JPEG, BMP or WebP)."
    )


def _decode_fully(item: Any, reader: Reader | None = None) -> str | None:
    """None when the image decodes to its last pixel, else the reason it does not."""
    try:
        with Image.open(item) if reader is None else reader(item) as image:
            image.load()  # the whole file: a truncated one fails here, not at open
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        return unreadable(item if reader is None else f"{item!r:.80} of {reader}", err)
    return None


def check_files(paths: Sequence[Any], threads: int = 0, reader: Reader | None = None) -> None:
    """Decodes every image once (PIL releases the GIL, so threads help); one `DataError` that
    names the first bad files and how many there are."""
    threads = threads or min(32, (os.cpu_count() or 1) * 4)
    decode = lambda item: _decode_fully(item, reader)
    with ThreadPoolExecutor(threads) as pool:
        problems = [p for p in pool.map(decode, paths, chunksize=64) if p]
    if problems:
        more = f" ({len(problems) - 1} more files fail the same way.)" if len(problems) > 1 else ""
        raise DataError(problems[0] + more)


def is_image_file(name: str) -> bool:
    return name.lower().endswith(EXTENSIONS) and not name.startswith(".")


@dataclasses.dataclass(frozen=True, eq=False)  # eq on arrays is ambiguous, so identity
class LazyImages:
    """Images by file path with a leading example axis, decoded by `np.asarray` only.

    Behaves as an array of shape `paths.shape + spec.shape` wherever the engine indexes data
    sets (`arrays.take`, episode sampling): indexing selects paths, so a data set of a million
    files costs its paths in memory, and a process decodes only the rows it reads.
    `quarter_turns` (same shape as `paths`, or None) rotates each image; rotated copies of a
    class make new classes for episodes. With a `reader`, the items are not file paths but
    what it opens (a TFDS record index, encoded bytes).
    """

    paths: np.ndarray  # object array of str (or of the reader's items)
    spec: ImageSpec
    quarter_turns: np.ndarray | None = None
    reader: Reader | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return (*self.paths.shape, *self.spec.shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: Any) -> LazyImages:
        turns = None if self.quarter_turns is None else np.asarray(self.quarter_turns[index])
        items = np.asarray(self.paths[index], dtype=object)
        return LazyImages(items, self.spec, turns, self.reader)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        flat = self.paths.reshape(-1)
        turns = np.zeros(len(flat), int) if self.quarter_turns is None else self.quarter_turns
        turns = np.asarray(turns).reshape(-1)
        out = np.empty((len(flat), *self.spec.shape), np.float32)
        for i, (path, k) in enumerate(zip(flat, turns, strict=True)):
            out[i] = read_image(path, self.spec, int(k), self.reader)
        out = out.reshape(self.shape)
        return out if dtype is None else out.astype(dtype)

    def __repr__(self) -> str:
        return f"LazyImages(shape={self.shape}, first={self.paths.reshape(-1)[:1].tolist()})"


def concatenate(parts: Sequence[LazyImages]) -> LazyImages:
    """Rows of `parts` one after another (all with the same spec)."""
    if len({(p.spec, id(p.reader)) for p in parts}) != 1:
        raise ValueError("Cannot concatenate images of different specs or readers.")
    turns = [p.quarter_turns for p in parts]
    joined = None
    if any(t is not None for t in turns):
        joined = np.concatenate(
            [np.zeros(len(p), int) if t is None else t for p, t in zip(parts, turns, strict=True)]
        )
    paths = np.concatenate([p.paths for p in parts])
    return LazyImages(paths, parts[0].spec, joined, parts[0].reader)


def preprocess_arrays(images: np.ndarray, spec: ImageSpec) -> np.ndarray:
    """Pixel arrays as read from files (uint8 or bool [N, H, W] or [N, H, W, C]) -> model
    inputs, exactly as the files would be converted (what `load_learner` applies)."""
    array = np.asarray(images)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    if array.dtype != np.uint8 or array.ndim not in (3, 4):
        raise DataError(
            f"Images for a learner trained on image files must be uint8 (or bool) [N, H, W] or "
            f"[N, H, W, C] as read from the files, got {array.dtype} {array.shape}."
        )
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    return np.stack([spec.convert(Image.fromarray(a)) for a in array])
