"""The `image_folder` source and episode family on trees the tests write: mixed sizes, modes
and formats, every layout, lazy decoding per process's rows, and every bad-input error."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from mtl.data import arrays, batches, images, prefetch, sources
from mtl.errors import ConfigError, DataError
from mtl.meta import families
from tests.own_data import write_table, write_tree

CLASSES = {"ant": 10, "bee": 10, "cat": 10}


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("images") / "tree")
    write_tree(root, CLASSES)
    return root


def source(**options):
    return sources.load({"name": "image_folder", "image_size": 12, **options})


def test_a_tree_of_mixed_images_is_one_task_with_a_stratified_test_split(tree):
    data = source(root=tree, channels=3, test_fraction=0.2)
    assert data.classes == {"label": ("ant", "bee", "cat")}
    assert arrays.input_shape(data.train) == (12, 12, 3)
    assert isinstance(data.train["inputs"], images.LazyImages)  # nothing decoded yet
    test_labels = data.test["labels"]["label"]
    assert np.bincount(test_labels).tolist() == [2, 2, 2]  # 20% of each class
    pixels = arrays.materialize(data.train)["inputs"]
    assert pixels.shape == (24, 12, 12, 3) and pixels.dtype == np.float32
    assert pixels.min() >= 0.0 and pixels.max() <= 1.0
    # Brightness is the class signal of the generated images: every mode kept it.
    means = [pixels[data.train["labels"]["label"] == c].mean() for c in range(3)]
    assert means[0] < means[1] < means[2]


def test_decoding_matches_pil_lanczos_on_the_file_and_inversion(tree):
    path = os.path.join(tree, "ant", "0000.png")  # an 8-bit grayscale PNG
    spec = images.ImageSpec(12, 1, invert=True)
    expected = np.asarray(Image.open(path).resize((12, 12), Image.Resampling.LANCZOS)) / 255.0
    got = np.asarray(images.LazyImages(np.array([path], object), spec))
    np.testing.assert_allclose(got[0, ..., 0], 1.0 - expected, atol=1e-6)


def test_split_folders_roots_per_task_and_a_labels_file(tmp_path, tree):
    write_tree(str(tmp_path / "split" / "train"), {"x": 4, "y": 4})
    write_tree(str(tmp_path / "split" / "test"), {"x": 2, "y": 2}, seed=1)
    data = source(root=str(tmp_path / "split"))
    assert arrays.num_examples(data.train) == 8 and arrays.num_examples(data.test) == 4

    data = source(roots={"insects": tree, "letters": str(tmp_path / "split" / "train")})
    masks = data.train["masks"]
    assert not np.any(masks["insects"] & masks["letters"])  # each image: its tree's task only
    assert masks["insects"].sum() + masks["letters"].sum() == arrays.num_examples(data.train)

    rows = [
        ["ant/0000.png", "small", "", "train"],
        ["bee/0001.jpg", "", "yes", "train"],
        ["cat/0002.png", "large", "no", "test"],
        ["ant/0003.bmp", "small", "no", "test"],
    ]
    labels = write_table(str(tmp_path / "labels.csv"), ["path", "size", "wings", "split"], rows)
    data = source(root=tree, labels_file=labels, split_column="split")
    assert data.classes == {"size": ("large", "small"), "wings": ("no", "yes")}
    assert data.train["labels"]["size"].tolist() == [1, -1]  # the empty cell: masked, not 0
    assert data.train["masks"]["size"].tolist() == [True, False]
    assert data.test["labels"]["wings"].tolist() == [0, 0]


def test_a_batch_decodes_only_this_process_rows_and_threads_change_nothing(tree, monkeypatch):
    data = source(root=tree)
    decoded = []
    read = images.read_image
    monkeypatch.setattr(
        images, "read_image", lambda item, *a: decoded.append(item) or read(item, *a)
    )
    source_ = batches.ArrayBatches(data.train, batches.mixed_sampler(0, data.train, 8), 8)
    first, second = source_(5, slice(0, 4)), source_(5, slice(4, 8))
    assert len(decoded) == 8 and len(set(decoded)) == 8  # 4 rows each, no other row read
    whole = source_(5, slice(0, 8))
    np.testing.assert_array_equal(
        np.concatenate([first["inputs"], second["inputs"]]), whole["inputs"]
    )
    serial = list(prefetch.prefetched(source_, 0, 6, slice(0, 8), threads=0))
    threaded = list(prefetch.prefetched(source_, 0, 6, slice(0, 8), threads=3))
    processes = list(prefetch.prefetched(source_, 0, 6, slice(0, 8), threads=1, workers=2))
    for a, b, c in zip(serial, threaded, processes, strict=True):
        np.testing.assert_array_equal(a["inputs"], b["inputs"])
        np.testing.assert_array_equal(a["inputs"], c["inputs"])
        np.testing.assert_array_equal(a["labels"]["label"], c["labels"]["label"])


def truncated(path: str) -> None:
    with open(path, "rb") as f:
        content = f.read()
    with open(path, "wb") as f:
        f.write(content[: len(content) // 2])


@pytest.mark.parametrize("damage", ["truncated", "not_an_image"])
def test_a_damaged_image_is_one_error_naming_the_file_before_any_workdir_change(tmp_path, damage):
    from mtl.runs import supervised
    from tests.test_transfer import toy_supervised_config

    root = str(tmp_path / "tree")
    write_tree(root, {"a": 3, "b": 3})
    bad = os.path.join(root, "b", "0001.jpg")
    if damage == "truncated":
        truncated(bad)
    else:
        with open(bad, "w") as f:
            f.write("not a picture")
    config = toy_supervised_config(num_steps=2)
    config.data = dict(name="image_folder", root=root, image_size=8)
    config.tasks = {"label": dict(head="classification", num_outputs=2)}
    with pytest.raises(DataError, match="0001.jpg"):
        supervised.train(config, str(tmp_path / "work"))
    assert not (tmp_path / "work").exists()


def test_tree_errors_name_the_folder_the_column_and_the_fix(tmp_path, tree):
    with pytest.raises(DataError, match="does not exist"):
        source(root=str(tmp_path / "nowhere"))
    os.makedirs(tmp_path / "empty_class" / "a")
    write_tree(str(tmp_path / "empty_class"), {"b": 2})
    with pytest.raises(DataError, match=r"empty_class/a holds no images"):
        source(root=str(tmp_path / "empty_class"))
    with pytest.raises(DataError, match="not among the declared classes"):
        source(root=tree, classes={"label": ["ant", "bee"]})
    rows = [["ant/0000.png", "small"], ["bee/0001.jpg", "huge"]]
    labels = write_table(str(tmp_path / "l.csv"), ["path", "size"], rows)
    with pytest.raises(DataError, match=r"l.csv, row 3, column 'size': label 'huge'"):
        source(root=tree, labels_file=labels, classes={"size": ["small", "large"]})
    with pytest.raises(ConfigError, match="no column 'sise'.*Did you mean 'size'"):
        source(root=tree, labels_file=labels, label_columns=["sise"])
    missing = write_table(str(tmp_path / "m.csv"), ["path", "size"], [["ant/9999.png", "small"]])
    with pytest.raises(DataError, match=r"m.csv, row 2: .*9999.png does not exist"):
        source(root=tree, labels_file=missing)


def test_episodes_from_a_folder_split_by_seed_by_listed_names_or_by_split_folders(tmp_path, tree):
    family = families.load(dict(name="image_folder", root=tree, image_size=8,
                                split_fractions=(0.34, 0.33, 0.33), rotations=(0, 2)))  # fmt: skip
    assert {s: family.num_classes(s) for s in ("train", "val", "test")} == {
        "train": 2, "val": 2, "test": 2}  # fmt: skip
    episodes = family.sample("train", 0, 3, batch=2, ways=2, shots=2, queries=3)
    x = np.asarray(episodes["support"]["x"])
    assert x.shape == (2, 4, 8, 8, 1)
    again = family.sample("train", 0, 3, batch=2, ways=2, shots=2, queries=3)
    np.testing.assert_array_equal(
        np.asarray(again["query"]["x"]), np.asarray(episodes["query"]["x"])
    )
    with pytest.raises(ConfigError, match="need 13 examples of each class"):
        family.check("train", 2, 3, 10)

    listed = dict(train=["ant"], val=["bee"], test=["cat"])
    family = families.load(dict(name="image_folder", root=tree, split_classes=listed))
    assert family.class_names["test"] == ("cat",)
    with pytest.raises(ConfigError, match="'dog', which is not a class"):
        families.load(dict(name="image_folder", root=tree, split_classes=listed | {"val": ["dog"]}))
    for split, seed in (("train", 0), ("val", 1), ("test", 2)):
        write_tree(str(tmp_path / "meta" / split), {f"{split}{i}": 3 for i in range(2)}, seed)
    family = families.load(dict(name="image_folder", root=str(tmp_path / "meta")))
    assert family.class_names["val"] == ("val/val0", "val/val1")
    kind, shape, preprocess = families.describe(dict(name="image_folder", root=tree, channels=3))
    raw = np.asarray(Image.open(os.path.join(tree, "bee", "0001.jpg")))[None]
    assert (kind, shape, preprocess(raw).shape) == ("classification", (28, 28, 3), (1, 28, 28, 3))


def test_results_name_the_classes(tmp_path, tree):
    from mtl.runs import supervised
    from tests.test_transfer import toy_supervised_config

    config = toy_supervised_config(num_steps=3)
    config.data = dict(name="image_folder", root=tree, image_size=6, channels=1)
    config.tasks = {"label": dict(head="classification", num_outputs=3)}
    supervised.train(config, str(tmp_path / "w"))
    results = json.loads((tmp_path / "w" / "results.json").read_text())
    assert results["classes"] == {"label": ["ant", "bee", "cat"]}
    assert results["test"]["label"]["count"] == 6


def test_in_memory_gives_the_streamed_pixels_and_episodes(tree):
    streamed, kept = source(root=tree), source(root=tree, in_memory=True)
    assert isinstance(kept.train["inputs"], np.ndarray)
    np.testing.assert_array_equal(np.asarray(streamed.train["inputs"]), kept.train["inputs"])
    options = dict(name="image_folder", root=tree, image_size=8, rotations=(0, 1, 2, 3),
                   split_fractions=(0.34, 0.33, 0.33))  # fmt: skip
    lazy, decoded = families.load(options), families.load(options | {"in_memory": True})
    a = lazy.sample("train", 0, 2, batch=2, ways=3, shots=2, queries=2)
    b = decoded.sample("train", 0, 2, batch=2, ways=3, shots=2, queries=2)
    np.testing.assert_array_equal(np.asarray(a["support"]["x"]), b["support"]["x"])
    np.testing.assert_array_equal(a["query"]["y"], b["query"]["y"])


def test_input_options_are_checked():
    assert prefetch.options(None) == {"threads": 2, "prefetch": 0, "workers": 0}
    with pytest.raises(ConfigError, match="no field.*thread.*takes threads, prefetch, workers"):
        prefetch.options({"thread": 4})
    with pytest.raises(ConfigError, match="config.input.threads must be an integer >= 0"):
        prefetch.options({"threads": -1})
