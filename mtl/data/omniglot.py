"""Omniglot as arrays for the engine: load, preprocess as MAML does, and split into alphabet tasks.

`load_omniglot` prepares the `omniglot_drawers` TFDS builder (see `omniglot_tfds.py`) once, from
the original zips in `data_dir` or by download, then reads the requested splits. Decoding and
resizing the ~6k (small zips) to ~32k (all zips) PNGs costs seconds, so the resized images are
cached as `mtl_arrays_<splits>_<size>px.npz` inside the prepared TFDS version folder; preparing
again (e.g. to add a split) deletes that folder and so the caches made from the old data.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import zipfile
from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from mtl.data.omniglot_tfds import NUM_DRAWERS, SPLIT_ZIPS, OmniglotDrawers, find_zips
from mtl.data.tensorflow_needed import require_tensorflow
from mtl.errors import ConfigError, DataError, unknown_name

ENV_VAR = "MTL_OMNIGLOT_DIR"
DATA_DIR_FLAG = "--config.data.data_dir"
_SOURCE = "https://github.com/brendenlake/omniglot (folder python/)"
_CACHE_KEYS = {"images", "alphabets", "alphabet", "character", "drawer"}

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, eq=False)  # eq on arrays is ambiguous, so identity
class OmniglotImages:
    """Preprocessed Omniglot images, sorted by (alphabet, character, drawer)."""

    images: np.ndarray  # float32 [N, S, S, 1], strokes 1, background 0
    alphabets: tuple[str, ...]  # sorted alphabet names
    alphabet: np.ndarray  # int32 [N], index into `alphabets`
    character: np.ndarray  # int32 [N], 0-based within the alphabet (characterNN - 1)
    drawer: np.ndarray  # int32 [N], 1..20

    def __post_init__(self):
        sizes = {len(a) for a in (self.images, self.alphabet, self.character, self.drawer)}
        if len(sizes) != 1:
            raise DataError(f"OmniglotImages fields disagree on the number of examples: {sizes}.")

    def __len__(self) -> int:
        return len(self.images)

    def class_ids(self) -> np.ndarray:
        """int32 [N]: a dense id 0..C-1 per (alphabet, character), in sorted order."""
        pairs = np.stack([self.alphabet, self.character], axis=1)
        _, ids = np.unique(pairs, axis=0, return_inverse=True)
        return ids.reshape(-1).astype(np.int32)


def resolve_data_dir(explicit: str | None) -> str | None:
    """The zips' folder: `explicit`, else $MTL_OMNIGLOT_DIR, else None (download through TFDS)."""
    return explicit or os.environ.get(ENV_VAR) or None


def load_omniglot(
    data_dir: str | None,
    *,
    splits: Sequence[str] = ("small1", "small2"),
    tfds_dir: str | None = None,
    image_size: int = 28,
) -> OmniglotImages:
    """Loads the union of `splits`, deduplicated by (alphabet, character, drawer).

    Args:
      data_dir: folder with the original zips, or None (or "") to download them (online).
      splits: any of `train`, `test` (full background / evaluation sets), `small1`, `small2`.
        Greek and Latin are in both small zips; they are kept once.
      tfds_dir: where TFDS keeps prepared data; None for TFDS's default.
      image_size: side S of the square images after resizing.
    """
    splits = _check_splits(splits, image_size)
    manual_dir = _check_data_dir(data_dir, splits)  # every input error fires before slow work

    start = time.perf_counter()
    builder = _prepared_builder(tfds_dir, manual_dir, splits)
    prepared = time.perf_counter()
    cache = builder.data_path / f"mtl_arrays_{'+'.join(splits)}_{image_size}px.npz"
    arrays = _read_cache(cache)
    if arrays is None:
        what = f"Reading Omniglot from its TFDS files ({cache.name} is not there yet)"
        require_tensorflow(what, os.fspath(builder.data_dir))
        arrays = _read_splits(builder, splits, image_size)
        _write_cache(cache, arrays)
    log.info(
        "Omniglot %s at %dpx: %d images; prepare %.1fs, load %.1fs.",
        "+".join(splits),
        image_size,
        len(arrays["images"]),
        prepared - start,
        time.perf_counter() - prepared,
    )
    return OmniglotImages(
        images=_to_unit(arrays["images"]),
        alphabets=tuple(str(a) for a in arrays["alphabets"]),
        alphabet=arrays["alphabet"].astype(np.int32),
        character=arrays["character"].astype(np.int32),
        drawer=arrays["drawer"].astype(np.int32),
    )


def preprocess_omniglot(images: np.ndarray, image_size: int = 28) -> np.ndarray:
    """Raw images as in the PNGs -> float32 [N, S, S, 1] as in MAML's code.

    Accepts uint8 or bool arrays [N, H, W], [N, H, W, 1] or [N, H, W, 3] (105x105 in Omniglot,
    white background). Each image is resized on its grayscale version with PIL's Lanczos filter,
    scaled to [0, 1] and inverted, so that strokes are 1 and the background 0.
    """
    array = np.asarray(images)
    if array.dtype == np.bool_:  # PIL's view of the 1-bit PNGs: True is white
        array = array.astype(np.uint8) * 255
    if array.dtype != np.uint8:
        raise DataError(
            f"Omniglot images must be uint8 (0..255) or bool, got {array.dtype}; pass the pixels "
            "as read from the PNGs."
        )
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4 or array.shape[-1] not in (1, 3):
        raise DataError(
            f"Omniglot images must be [N, H, W], [N, H, W, 1] or [N, H, W, 3], got {array.shape}."
        )
    return _to_unit(_resize(array, image_size))


# Label fields over all alphabets that `alphabet_tasks(pooled=...)` adds, labelling every image.
POOLED = {
    "alphabet": "which alphabet (one class per alphabet)",
    "character": "which character of all alphabets (one class per (alphabet, character))",
}


def alphabet_tasks(
    data: OmniglotImages, test_drawers: Sequence[int], pooled: Sequence[str] = ()
) -> tuple[dict, dict, dict[str, int]]:
    """Omniglot as multi-task learning: one task per alphabet, classifying its characters.

    Returns `(train, test, num_classes)`. `train` and `test` are array datasets
    `{"inputs": [N, S, S, 1], "labels": {alphabet: int32 [N]}, "masks": {alphabet: bool [N]}}`;
    an image is labelled only for its own alphabet (elsewhere label -1, mask False). Images by
    the drawers in `test_drawers` form `test`, the rest `train`. `pooled` adds label fields of
    `POOLED` that label every image: "alphabet" (its alphabet's index) and "character" (its
    class id over all alphabets, `OmniglotImages.class_ids`).
    """
    bad = [d for d in test_drawers if not _is_drawer(d)]
    if bad:
        raise ConfigError(f"test_drawers must be drawers 1..{NUM_DRAWERS}, got {bad}.")
    for name in pooled:
        if name not in POOLED:
            raise unknown_name("pooled task", name, POOLED, field="data.pooled_tasks")
    test_drawers = sorted({int(d) for d in test_drawers})
    present = set(np.unique(data.drawer).tolist())
    if present <= set(test_drawers):
        raise ConfigError(
            f"test_drawers {test_drawers} hold every drawer of the data, which leaves no training "
            f"images; hold out a few of 1..{NUM_DRAWERS} (e.g. [16, 17, 18, 19, 20])."
        )

    labels, masks, num_classes = {}, {}, {}
    for index, name in enumerate(data.alphabets):
        own = data.alphabet == index
        masks[name] = own
        labels[name] = np.where(own, data.character, -1).astype(np.int32)
        # Characters are numbered 1..n in the folders, so max + 1 is their count.
        num_classes[name] = int(data.character[own].max()) + 1 if own.any() else 0
    everywhere = np.ones(len(data), bool)
    for name in pooled:
        values = data.alphabet if name == "alphabet" else data.class_ids()
        labels[name], masks[name] = values.astype(np.int32), everywhere
        num_classes[name] = len(data.alphabets) if name == "alphabet" else int(values.max()) + 1

    def subset(keep: np.ndarray) -> dict:
        return {
            "inputs": data.images[keep],
            "labels": {name: value[keep] for name, value in labels.items()},
            "masks": {name: value[keep] for name, value in masks.items()},
        }

    is_test = np.isin(data.drawer, test_drawers)
    return subset(~is_test), subset(is_test), num_classes


def _is_drawer(value: object) -> bool:
    is_int = isinstance(value, int | np.integer) and not isinstance(value, bool)
    return is_int and 1 <= value <= NUM_DRAWERS


def _check_splits(splits: Sequence[str], image_size: int) -> list[str]:
    """Sorted unique split names, or `ConfigError`."""
    if isinstance(splits, str):  # a lone "small1" would otherwise iterate as characters
        splits = [splits]
    if not splits:
        raise ConfigError(f"No Omniglot split requested; choose from {', '.join(SPLIT_ZIPS)}.")
    for split in splits:
        if split not in SPLIT_ZIPS:
            raise unknown_name("Omniglot split", split, SPLIT_ZIPS)
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ConfigError(f"image_size must be a positive int, got {image_size!r}.")
    return sorted(set(splits))


def _check_data_dir(data_dir: str | None, splits: Sequence[str]) -> str | None:
    """The manual directory for TFDS (None: download), after checking the zips are there."""
    if not data_dir:  # "" is how a config says "not set"
        return None
    path = epath.Path(data_dir).expanduser()
    if not path.is_dir():
        raise DataError(
            f"The Omniglot data directory {data_dir} does not exist. Set {DATA_DIR_FLAG} or the "
            f"environment variable {ENV_VAR} to the folder holding the original Omniglot zips "
            "(or unset both to download them through TFDS)."
        )
    zips = find_zips(path)
    if not zips:
        raise DataError(
            f"The Omniglot data directory {data_dir} holds none of the expected zips: "
            f"{', '.join(SPLIT_ZIPS.values())}. Put the original zips from {_SOURCE} there, "
            f"unchanged, or point {DATA_DIR_FLAG} / {ENV_VAR} at the folder that has them."
        )
    missing = [split for split in splits if split not in zips]
    if missing:
        needed = ", ".join(f"{SPLIT_ZIPS[s]} (split {s})" for s in missing)
        raise DataError(
            f"{data_dir} lacks {needed}. Add the zip from {_SOURCE}, or request only the splits "
            f"whose zip is there: {', '.join(sorted(zips))}."
        )
    return os.fspath(path)


def _prepared_builder(
    tfds_dir: str | None, manual_dir: str | None, splits: Sequence[str]
) -> OmniglotDrawers:
    """The builder with `splits` prepared; prepares (again, if a split is missing) when needed."""
    builder = OmniglotDrawers(data_dir=tfds_dir)
    mode = tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
    if builder.is_prepared():
        missing = [split for split in splits if split not in builder.info.splits]
        if not missing:
            return builder
        # TFDS cannot add a split to prepared data: overwrite it (the zips are still there).
        log.info("Prepared Omniglot at %s lacks %s; preparing again.", builder.data_dir, missing)
        mode = tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS
    config = tfds.download.DownloadConfig(manual_dir=manual_dir, download_mode=mode)
    require_tensorflow("Preparing Omniglot as a TFDS data set", os.fspath(builder.data_dir))
    builder.download_and_prepare(download_config=config)
    return OmniglotDrawers(data_dir=tfds_dir)  # a fresh instance reads the new split infos


def _read_splits(builder: OmniglotDrawers, splits: Sequence[str], size: int) -> dict:
    """Decodes, deduplicates, sorts and resizes the splits: arrays as stored in the cache."""
    parts = [tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1)) for split in splits]
    names = np.array([name.decode() for p in parts for name in p["alphabet"]])  # Text is UTF-8
    character = np.concatenate([p["character"] for p in parts]).astype(np.int32)
    drawer = np.concatenate([p["drawer"] for p in parts]).astype(np.int32)
    alphabets, alphabet = np.unique(names, return_inverse=True)
    alphabet = alphabet.astype(np.int32)

    # A stable sort keeps the first copy of a duplicate (same alphabet, character and drawer).
    order = np.lexsort((drawer, character, alphabet))
    keys = np.stack([alphabet, character, drawer], axis=1)[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = np.any(keys[1:] != keys[:-1], axis=1)
    keep = order[first]

    # Resize split by split: the raw 105x105 images of all four splits would take 350 MB.
    images = np.concatenate([_resize(p.pop("image"), size) for p in parts])
    return {
        "images": images[keep],
        "alphabets": alphabets,
        "alphabet": alphabet[keep],
        "character": character[keep],
        "drawer": drawer[keep],
    }


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 [N, H, W, 1 or 3] -> uint8 [N, S, S]: grayscale, then PIL Lanczos resize."""
    out = np.empty((len(images), size, size), dtype=np.uint8)
    for i, image in enumerate(images):
        gray = Image.fromarray(image[..., 0]) if image.shape[-1] == 1 else Image.fromarray(image)
        out[i] = np.asarray(gray.convert("L").resize((size, size), Image.Resampling.LANCZOS))
    return out


def _to_unit(images: np.ndarray) -> np.ndarray:
    """uint8 [N, S, S] -> float32 [N, S, S, 1] in [0, 1], inverted (MAML: 1 - x / 255)."""
    return (1.0 - images.astype(np.float32) / 255.0)[..., None]


def _read_cache(path: epath.Path) -> dict | None:
    """The cached arrays, or None when there is no usable cache."""
    if not path.exists():
        return None
    try:
        with path.open("rb") as f, np.load(f) as arrays:
            if set(arrays.files) == _CACHE_KEYS:
                return {key: arrays[key] for key in arrays.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        log.warning("Ignoring the unreadable Omniglot cache %s (%s).", path, e)
    return None  # rebuilt and rewritten by the caller


def _write_cache(path: epath.Path, arrays: dict) -> None:
    """Writes the cache atomically; a read-only TFDS folder only costs the speed-up."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("wb") as f:
            np.savez(f, **arrays)
        tmp.replace(path)
    except OSError as e:
        log.warning("Could not cache Omniglot arrays at %s (%s); loading stays slower.", path, e)
