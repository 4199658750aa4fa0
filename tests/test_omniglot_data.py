"""Omniglot through the `omniglot_drawers` TFDS builder: counts, fields, tasks, errors."""

import io
import os
import re
import time
import zipfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image
from tensorflow_datasets.image_classification.omniglot import _DL_URLS

from mtl.data import omniglot
from mtl.data.omniglot import (
    alphabet_tasks,
    load_omniglot,
    preprocess_omniglot,
    resolve_data_dir,
)
from mtl.data.omniglot_tfds import SPLIT_ZIPS, OmniglotDrawers
from mtl.errors import ConfigError, DataError

SMALL_ZIPS = ("images_background_small1.zip", "images_background_small2.zip")
MEMBER = re.compile(r"^[^/]+/([^/]+)/character(\d+)/(\d+)_(\d+)\.png$")


class DownloadAttempted(Exception):
    pass


@pytest.fixture(autouse=True)
def no_download(monkeypatch):
    """Any download fails the test; records the URLs it was asked for."""
    asked = []

    def download(self, urls, *args, **kwargs):
        asked.append(urls)
        raise DownloadAttempted(urls)

    monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract", download)
    monkeypatch.setattr(tfds.download.DownloadManager, "download", download)
    return asked


def zip_listing(omniglot_dir):
    """{(alphabet, character 0-based, drawer)} of the PNGs of both small zips, by `zipfile`."""
    keys = set()
    for name in SMALL_ZIPS:
        with zipfile.ZipFile(os.path.join(omniglot_dir, name)) as archive:
            for member in archive.namelist():
                if match := MEMBER.match(member):
                    alphabet, character, _, drawer = match.groups()
                    keys.add((alphabet, int(character) - 1, int(drawer)))
    return keys


def png_bytes(seed: int) -> bytes:
    """A 105x105 1-bit PNG like Omniglot's: white background, a few black strokes."""
    pixels = np.ones((105, 105), dtype=bool)
    rng = np.random.default_rng(seed)
    for row, col in rng.integers(10, 90, size=(4, 2)):
        pixels[row : row + 12, col : col + 3] = False
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_zip(path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in members.items():
            archive.writestr(member, data)


def fake_zip(directory, top: str, alphabets=("Alpha", "Beta")) -> dict[str, bytes]:
    """A tiny `<top>.zip` laid out as Omniglot's: 2 characters, drawers 1..3 per alphabet."""
    members = {}
    for a, alphabet in enumerate(alphabets):
        for character in (1, 2):
            for drawer in (1, 2, 3):
                label = 10 * a + character
                member = f"{top}/{alphabet}/character{character:02d}/{label:04d}_{drawer:02d}.png"
                members[member] = png_bytes(len(members))
    write_zip(os.path.join(directory, f"{top}.zip"), members)
    return members


# --- the real small zips -------------------------------------------------------------------


def test_small_zips_give_eight_alphabets_deduplicated(omniglot_images, omniglot_dir):
    keys = zip_listing(omniglot_dir)
    assert len(omniglot_images) == len(keys) == 4840  # 2720 + 3120 - Greek 480 - Latin 520
    assert omniglot_images.alphabets == tuple(sorted({a for a, _, _ in keys}))
    assert len(omniglot_images.alphabets) == 8
    got = {
        (omniglot_images.alphabets[a], c, d)
        for a, c, d in zip(
            omniglot_images.alphabet, omniglot_images.character, omniglot_images.drawer, strict=True
        )
    }
    assert got == keys


def test_fields_dtypes_and_order(omniglot_images, omniglot_dir):
    data = omniglot_images
    assert data.images.shape == (len(data), 28, 28, 1) and data.images.dtype == np.float32
    assert data.images.min() >= 0.0 and data.images.max() <= 1.0
    assert data.images.mean() < 0.3  # inverted: background 0, strokes 1
    assert {data.alphabet.dtype, data.character.dtype, data.drawer.dtype} == {np.dtype(np.int32)}
    assert set(np.unique(data.drawer)) == set(range(1, 21))
    keys = list(zip(data.alphabet, data.character, data.drawer, strict=True))
    assert keys == sorted(keys)

    ids = data.class_ids()
    pairs = sorted({(a, c) for a, c, _ in zip_listing(omniglot_dir)})
    assert ids.dtype == np.int32 and ids.min() == 0 and ids.max() == len(pairs) - 1
    assert np.all(np.diff(ids) >= 0)  # sorted data, sorted ids
    assert np.all(np.bincount(ids) == 20)  # one image per drawer


def test_second_load_comes_from_cache_unchanged(omniglot_images, omniglot_dir, omniglot_tfds_dir):
    cache = os.path.join(
        omniglot_tfds_dir, "omniglot_drawers", "1.0.0", "mtl_arrays_small1+small2_28px.npz"
    )
    assert os.path.exists(cache)
    start = time.perf_counter()
    again = load_omniglot(omniglot_dir, tfds_dir=omniglot_tfds_dir, splits=["small2", "small1"])
    assert time.perf_counter() - start < 2.0
    np.testing.assert_array_equal(again.images, omniglot_images.images)
    np.testing.assert_array_equal(again.drawer, omniglot_images.drawer)
    assert again.alphabets == omniglot_images.alphabets


def test_preprocess_matches_pil_on_a_raw_png(omniglot_images, omniglot_dir):
    member = "images_background_small2/Japanese_(katakana)/character07/0602_13.png"
    with zipfile.ZipFile(os.path.join(omniglot_dir, SMALL_ZIPS[1])) as archive:
        raw = Image.open(io.BytesIO(archive.read(member)))
        raw.load()
    resized = raw.convert("L").resize((28, 28), Image.Resampling.LANCZOS)
    expected = 1.0 - np.asarray(resized, dtype=np.float32) / 255.0
    assert 0.02 < expected.mean() < 0.5  # a real character, not a blank

    as_bool = np.asarray(raw)[None]  # PIL reads the 1-bit PNG as bool, True = white
    as_uint8 = as_bool.astype(np.uint8) * 255
    for images in (as_bool, as_uint8, as_uint8[..., None], np.repeat(as_uint8[..., None], 3, -1)):
        got = preprocess_omniglot(images)
        assert got.shape == (1, 28, 28, 1) and got.dtype == np.float32
        np.testing.assert_array_equal(got[0, ..., 0], expected)

    # The same image after TFDS encoding, decoding and the cache.
    data = omniglot_images
    row = np.flatnonzero(
        (data.alphabet == data.alphabets.index("Japanese_(katakana)"))
        & (data.character == 6)
        & (data.drawer == 13)
    )
    assert len(row) == 1
    np.testing.assert_array_equal(data.images[row[0], ..., 0], expected)


def test_preprocess_rejects_other_inputs():
    with pytest.raises(DataError, match="uint8"):
        preprocess_omniglot(np.zeros((2, 105, 105), np.float32))
    with pytest.raises(DataError, match=r"\[N, H, W\]"):
        preprocess_omniglot(np.zeros((105, 105, 2), np.uint8)[None])


def test_alphabet_tasks_masks_labels_and_drawer_split(omniglot_images, omniglot_dir):
    data = omniglot_images
    train, test, num_classes = alphabet_tasks(data, test_drawers=[16, 17, 18, 19, 20])
    assert len(train["inputs"]) == len(data) * 15 // 20
    assert len(test["inputs"]) == len(data) * 5 // 20
    assert train["inputs"].dtype == np.float32

    characters = {}
    for alphabet, character, _ in zip_listing(omniglot_dir):
        characters.setdefault(alphabet, set()).add(character)
    assert num_classes == {a: len(c) for a, c in characters.items()}
    assert num_classes["Greek"] == 24 and num_classes["Latin"] == 26

    for split in (train, test):
        assert set(split["labels"]) == set(split["masks"]) == set(data.alphabets)
        masks = np.stack([split["masks"][a] for a in data.alphabets], axis=1)
        assert masks.dtype == bool and np.all(masks.sum(axis=1) == 1)  # one task per image
        for alphabet in data.alphabets:
            labels, mask = split["labels"][alphabet], split["masks"][alphabet]
            assert labels.dtype == np.int32 and len(labels) == len(split["inputs"])
            assert np.all(labels[~mask] == -1)
            assert np.all((labels[mask] >= 0) & (labels[mask] < num_classes[alphabet]))

    # The drawers of each side, recovered from the data order.
    is_test = np.isin(data.drawer, [16, 17, 18, 19, 20])
    assert set(data.drawer[~is_test]).isdisjoint(set(data.drawer[is_test]))
    np.testing.assert_array_equal(test["inputs"], data.images[is_test])
    korean = data.alphabets.index("Korean")
    np.testing.assert_array_equal(
        train["labels"]["Korean"], np.where(data.alphabet == korean, data.character, -1)[~is_test]
    )


@pytest.mark.parametrize("drawers", [[0], [21], [3, 3.5], list(range(1, 21))])
def test_alphabet_tasks_rejects_bad_test_drawers(omniglot_images, drawers):
    with pytest.raises(ConfigError, match="test_drawers"):
        alphabet_tasks(omniglot_images, test_drawers=drawers)


# --- errors, before any slow work ----------------------------------------------------------


@pytest.fixture
def no_prepare(monkeypatch):
    """Creating the builder (the first slow step) fails the test."""

    def builder(*args, **kwargs):
        raise AssertionError("load_omniglot went on to TFDS before checking its inputs.")

    monkeypatch.setattr(omniglot, "OmniglotDrawers", builder)


def load_fast(data_dir, tfds_dir, **kwargs):
    start = time.perf_counter()
    try:
        load_omniglot(str(data_dir), tfds_dir=str(tfds_dir), **kwargs)
    finally:
        assert time.perf_counter() - start < 1.0
        assert not os.listdir(tfds_dir)


def test_missing_dir_names_flag_and_env_var(tmp_path, no_prepare):
    (tmp_path / "tfds").mkdir()
    with pytest.raises(DataError, match="does not exist") as error:
        load_fast(tmp_path / "nowhere", tmp_path / "tfds")
    assert "--config.data.data_dir" in str(error.value) and "MTL_OMNIGLOT_DIR" in str(error.value)


def test_dir_without_zips_lists_expected_files(tmp_path, no_prepare):
    (tmp_path / "tfds").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "README").write_text("not a zip")
    with pytest.raises(DataError, match="none of the expected zips") as error:
        load_fast(tmp_path / "data", tmp_path / "tfds")
    for name in ("images_background.zip", "images_evaluation.zip", *SMALL_ZIPS):
        assert name in str(error.value)


def test_missing_split_zip_is_named(tmp_path, omniglot_dir, no_prepare):
    (tmp_path / "tfds").mkdir()
    (tmp_path / "data").mkdir()
    os.symlink(os.path.join(omniglot_dir, SMALL_ZIPS[0]), tmp_path / "data" / SMALL_ZIPS[0])
    with pytest.raises(DataError, match=r"images_background_small2\.zip \(split small2\)"):
        load_fast(tmp_path / "data", tmp_path / "tfds")
    with pytest.raises(DataError, match=r"images_background\.zip \(split train\)"):
        load_fast(omniglot_dir, tmp_path / "tfds", splits=("train",))


def test_bad_split_name_or_size(tmp_path, omniglot_dir, no_prepare):
    (tmp_path / "tfds").mkdir()
    with pytest.raises(ConfigError, match="Did you mean 'small1'"):
        load_fast(omniglot_dir, tmp_path / "tfds", splits=("smal1",))
    with pytest.raises(ConfigError, match="image_size"):
        load_fast(omniglot_dir, tmp_path / "tfds", image_size=0)


def test_resolve_data_dir(monkeypatch):
    monkeypatch.setenv("MTL_OMNIGLOT_DIR", "/from/env")
    assert resolve_data_dir("/explicit") == "/explicit"
    assert resolve_data_dir(None) == "/from/env"
    monkeypatch.delenv("MTL_OMNIGLOT_DIR")
    assert resolve_data_dir(None) is None


# --- the builder on small fake zips --------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncate", "garbage", "crc"])
def test_corrupt_png_names_zip_and_member(tmp_path, damage):
    good = png_bytes(0)
    bad = {
        "truncate": good[: len(good) - 20],
        "garbage": b"not a png",
        "crc": good[:-20] + bytes([good[-20] ^ 0xFF]) + good[-19:],  # a flipped byte in IDAT
    }[damage]
    broken = "images_background_small1/Alpha/character01/0001_02.png"
    (tmp_path / "data").mkdir()
    write_zip(
        tmp_path / "data" / SMALL_ZIPS[0],
        {"images_background_small1/Alpha/character01/0001_01.png": good, broken: bad},
    )
    with pytest.raises(DataError, match="download the zip again") as error:
        load_omniglot(str(tmp_path / "data"), splits=("small1",), tfds_dir=str(tmp_path / "tfds"))
    assert broken in str(error.value) and SMALL_ZIPS[0] in str(error.value)


def test_builder_records_drawer_label_and_character(tmp_path):
    (tmp_path / "data").mkdir()
    members = fake_zip(tmp_path / "data", "images_background_small1")
    builder = OmniglotDrawers(data_dir=str(tmp_path / "tfds"))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / "data"))
    )
    assert set(builder.info.splits) == {"small1"}  # only the zip that is there
    records = tfds.as_numpy(builder.as_dataset(split="small1", batch_size=-1))
    got = sorted(
        (a.decode(), int(c), int(label), int(d))
        for a, c, label, d in zip(
            records["alphabet"],
            records["character"],
            records["label"],
            records["drawer"],
            strict=True,
        )
    )
    expected = sorted(
        (m.split("/")[1], int(m[-14:-12]) - 1, int(m[-11:-7]) - 1, int(m[-6:-4])) for m in members
    )
    assert got == expected
    assert records["image"].shape == (len(members), 105, 105, 1)
    assert set(np.unique(records["image"])) == {0, 255}


def test_new_split_zip_prepares_again(tmp_path):
    data, tfds_dir = tmp_path / "data", str(tmp_path / "tfds")
    data.mkdir()
    fake_zip(data, "images_background_small1", alphabets=("Alpha", "Beta"))
    first = load_omniglot(str(data), splits=("small1",), tfds_dir=tfds_dir)
    assert first.alphabets == ("Alpha", "Beta") and len(first) == 12

    # Beta is in both zips, as Greek and Latin are in the real ones.
    fake_zip(data, "images_background_small2", alphabets=("Beta", "Gamma"))
    both = load_omniglot(str(data), splits=("small1", "small2"), tfds_dir=tfds_dir)
    assert both.alphabets == ("Alpha", "Beta", "Gamma") and len(both) == 18
    again = load_omniglot(str(data), splits=("small1",), tfds_dir=tfds_dir)
    np.testing.assert_array_equal(again.images, first.images)


def test_no_data_dir_downloads_the_stock_urls(tmp_path, no_download):
    with pytest.raises(DownloadAttempted):
        load_omniglot(None, tfds_dir=str(tmp_path / "tfds"))
    assert sorted(no_download[0].values()) == sorted(_DL_URLS.values())


def test_online_mode_reads_the_extracted_zips(tmp_path, monkeypatch):
    """What TFDS's download_and_extract returns (folders) prepares like the zips do."""
    extracted = {}
    for split, name in SPLIT_ZIPS.items():
        top = name.removesuffix(".zip")
        fake_zip(tmp_path, top, alphabets=(f"{split}_alphabet",))
        with zipfile.ZipFile(tmp_path / name) as archive:
            archive.extractall(tmp_path / "extracted" / split)
        extracted[split] = epath.Path(tmp_path / "extracted" / split)
    asked = []

    def download_and_extract(self, urls):
        asked.append(urls)
        return extracted

    monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract", download_and_extract)
    data = load_omniglot(None, splits=("test", "small1"), tfds_dir=str(tmp_path / "tfds"))
    assert sorted(asked[0].values()) == sorted(_DL_URLS.values())
    assert data.alphabets == ("small1_alphabet", "test_alphabet") and len(data) == 12
    assert set(data.drawer) == {1, 2, 3} and set(data.character) == {0, 1}
