"""TFDS builder `omniglot_drawers`: Omniglot with each image's drawer, from the original zips.

The stock TFDS `omniglot` builder only downloads its four zips from GitHub and drops the drawer
(the `YY` of `XXXX_YY.png`), which we need to hold drawers out. This builder reads the same zips
from a manual directory (offline) or downloads them from the stock builder's URLs (online):

    OmniglotDrawers(data_dir=tfds_dir).download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir="/path/to/omniglot_zips"))

`mtl.data.omniglot.load_omniglot` does this for the engine. Splits are named as in the stock
builder (`train`, `test`, `small1`, `small2`); offline, only the splits whose zip is in the manual
directory are generated.
"""

from __future__ import annotations

import functools
import io
import logging
import re
import zipfile
import zlib
from collections.abc import Callable, Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image
from tensorflow_datasets.image_classification.omniglot import _CITATION, _DL_URLS

from mtl.errors import DataError

# Our split name -> the original zip's file name; the stock builder calls the `test` URL "eval".
SPLIT_ZIPS: dict[str, str] = {
    "train": "images_background.zip",
    "test": "images_evaluation.zip",
    "small1": "images_background_small1.zip",
    "small2": "images_background_small2.zip",
}
_SPLIT_URLS = {
    "train": _DL_URLS["train"],
    "test": _DL_URLS["eval"],
    "small1": _DL_URLS["small1"],
    "small2": _DL_URLS["small2"],
}
IMAGE_SHAPE = (105, 105)
NUM_DRAWERS = 20
_NUM_CLASSES = 1623  # characters over all 50 alphabets, as in the stock builder

# <set>/<Alphabet>/characterNN/XXXX_YY.png, XXXX the global character number, YY the drawer.
_MEMBER = re.compile(
    r"^[^/]+/(?P<alphabet>[^/]+)/character(?P<character>\d+)/(?P<label>\d+)_(?P<drawer>\d+)\.png$"
)
# Errors a damaged archive member or PNG can raise while it is read and decoded.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, zlib.error, zipfile.BadZipFile)

log = logging.getLogger(__name__)


def find_zips(directory: epath.PathLike) -> dict[str, epath.Path]:
    """The original zips present in `directory`, by split name (cheap: no file is opened)."""
    directory = epath.Path(directory)
    paths = {split: directory / name for split, name in SPLIT_ZIPS.items()}
    return {split: path for split, path in paths.items() if path.is_file()}


class OmniglotDrawers(tfds.core.GeneratorBasedBuilder):
    """Omniglot (Lake et al. 2015) with alphabet, character, global label and drawer per image."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: the stock features plus the drawer, offline zips."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
    Put any of the original Omniglot zips from https://github.com/brendenlake/omniglot (folder
    `python/`) into the manual directory, unchanged: {", ".join(SPLIT_ZIPS.values())}.
    Each zip gives one split ({", ".join(f"{n} -> {s}" for s, n in SPLIT_ZIPS.items())}); only
    the splits whose zip is present are generated. With none of them there, all four are downloaded.
    """

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description="Omniglot handwritten characters with the drawer (1..20) of each image.",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(*IMAGE_SHAPE, 1), encoding_format="png"),
                    "alphabet": tfds.features.Text(),
                    "character": np.int32,
                    "label": tfds.features.ClassLabel(num_classes=_NUM_CLASSES),
                    "drawer": np.int32,
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://github.com/brendenlake/omniglot",
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        sources = _manual_zips(dl_manager)
        if sources is None:
            sources = dl_manager.download_and_extract(_SPLIT_URLS)
        return {split: self._generate_examples(source) for split, source in sources.items()}

    def _generate_examples(self, source: epath.Path):
        for member, read in _png_members(epath.Path(source)):
            match = _MEMBER.match(member)
            if match is None:
                raise DataError(
                    f"{source} holds {member}, which is not at "
                    "<set>/<Alphabet>/characterNN/XXXX_YY.png; use the original Omniglot zip."
                )
            drawer = int(match["drawer"])
            if not 1 <= drawer <= NUM_DRAWERS:
                raise DataError(
                    f"{source}: {member} names drawer {drawer}, outside 1..{NUM_DRAWERS}; "
                    "use the original Omniglot zip."
                )
            record = {
                "image": _decode_png(read, source, member),
                "alphabet": match["alphabet"],
                "character": int(match["character"]) - 1,  # characterNN is 1-based
                "label": int(match["label"]) - 1,  # as the stock builder
                "drawer": drawer,
            }
            yield member, record


def _manual_zips(dl_manager: tfds.download.DownloadManager) -> dict[str, epath.Path] | None:
    """Zips in the manual directory by split; None when there is no manual directory (online)."""
    try:
        manual_dir = dl_manager.manual_dir
    except AssertionError:  # TFDS's way of saying the manual directory is missing or empty
        return None
    zips = find_zips(manual_dir)
    if not zips:
        # TFDS's default manual directory is shared by all data sets, so other files are no error.
        log.info("No Omniglot zip in %s: downloading them.", manual_dir)
        return None
    return zips


def _png_members(source: epath.Path) -> Iterator[tuple[str, Callable[[], bytes]]]:
    """(member path, reader) for each PNG of a zip file or of the directory it was extracted to."""
    if source.is_dir():  # online: TFDS extracted the download
        # A fixed depth, as epath refuses `**` (too many requests on GCS).
        for path in sorted(source.glob("*/*/*/*.png")):
            member = str(path.relative_to(source))
            if not member.startswith("__MACOSX/"):
                yield member, path.read_bytes
        return
    try:
        archive = zipfile.ZipFile(source)
    except (OSError, zipfile.BadZipFile) as e:
        raise DataError(
            f"Cannot read the zip {source} ({e}). Download it again from "
            "https://github.com/brendenlake/omniglot (folder python/) and replace it."
        ) from e
    with archive:
        for member in sorted(archive.namelist()):
            # Skip folders and the resource forks macOS adds when it re-zips a folder.
            if member.endswith(".png") and not member.startswith("__MACOSX/"):
                yield member, functools.partial(archive.read, member)


def _decode_png(read: Callable[[], bytes], source: epath.Path, member: str) -> Image.Image:
    """Reads and fully decodes one PNG as an 8-bit grayscale image, or raises `DataError`."""
    try:
        data = read()
        # verify() checks every chunk's CRC and the end marker; load() alone lets a truncated
        # file through when some library has set PIL's global LOAD_TRUNCATED_IMAGES.
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
        with Image.open(io.BytesIO(data)) as image:
            gray = image.convert("L")  # decodes the pixels
    except _DECODE_ERRORS as e:
        raise DataError(
            f"Cannot decode {member} in {source} ({type(e).__name__}: {e}). The file is corrupt: "
            "download the zip again from https://github.com/brendenlake/omniglot (folder "
            "python/) and replace it."
        ) from e
    if gray.size != IMAGE_SHAPE:
        raise DataError(
            f"{member} in {source} is {gray.size[0]}x{gray.size[1]}, not 105x105. Replace the zip "
            "with the original from https://github.com/brendenlake/omniglot (folder python/)."
        )
    return gray
