"""The `tfds` source and episode family on small data sets the tests prepare with a builder
(array_record: streamed by record index; tfrecord: encoded bytes in memory); never downloads."""

from __future__ import annotations

import numpy as np
import pytest

from mtl.data import arrays, images, sources
from mtl.errors import ConfigError, DataError
from mtl.meta import families

NAMES = ["circle", "square", "star", "moon"]


def make_builder(tfds):
    class Shapes(tfds.core.GeneratorBasedBuilder):
        """Random images of random sizes whose brightness is the class, with a caption."""

        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict({
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "caption": tfds.features.Text(),
                    "label": tfds.features.ClassLabel(names=NAMES),
                }),
            )  # fmt: skip

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(40, 0), "test": self._generate_examples(8, 1)}

        def _generate_examples(self, n, seed):
            rng = np.random.default_rng(seed)
            for i in range(n):
                h, w = (int(v) for v in rng.integers(10, 30, 2))
                c = i % 4
                pixels = np.full((h, w, 3), 40 + 60 * c, np.uint8)
                yield i, {"image": pixels, "caption": f"a {NAMES[c]} number {i}", "label": c}

    return Shapes


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> dict[str, str]:
    import tensorflow_datasets as tfds

    dirs, builder = {}, make_builder(tfds)  # a class registers once per process
    for fmt in ("array_record", "tfrecord"):
        data_dir = str(tmp_path_factory.mktemp(f"tfds_{fmt}"))
        builder(data_dir=data_dir, file_format=fmt).download_and_prepare()
        dirs[fmt] = data_dir
    return dirs


@pytest.mark.parametrize("fmt", ["array_record", "tfrecord"])
def test_a_prepared_image_data_set_is_read_lazily_with_its_class_names(prepared, fmt):
    data = sources.load(dict(name="tfds", dataset="shapes", data_dir=prepared[fmt],
                             image_key="image", label_keys=["label"], image_size=8))  # fmt: skip
    assert data.classes == {"label": tuple(NAMES)}
    assert isinstance(data.train["inputs"], images.LazyImages)
    assert arrays.num_examples(data.train) == 40 and arrays.num_examples(data.test) == 8
    batch = arrays.materialize(arrays.take(data.train, np.arange(40)))
    labels = batch["labels"]["label"]
    for c in range(4):  # the brightness of each class survived decoding and resizing
        np.testing.assert_allclose(batch["inputs"][labels == c], (40 + 60 * c) / 255, atol=1e-5)


def test_text_features_and_episodes(prepared, minilm_dir):
    data = sources.load(dict(name="tfds", dataset="shapes", data_dir=prepared["array_record"],
                             text_key="caption", label_keys=["label"], tokenizer_dir=minilm_dir,
                             max_length=10))  # fmt: skip
    assert data.train["inputs"]["input_ids"].shape == (40, 10)
    family = families.load(dict(name="tfds", dataset="shapes", data_dir=prepared["array_record"],
                                split_classes=dict(train=["circle", "square"], val=["star"],
                                                   test=["moon"]), image_size=8))  # fmt: skip
    episodes = family.sample("train", 0, 1, batch=2, ways=2, shots=3, queries=2)
    assert np.asarray(episodes["query"]["x"]).shape == (2, 4, 8, 8, 3)


def test_what_is_not_prepared_is_one_error_naming_what_is(prepared, tmp_path):
    base = dict(name="tfds", data_dir=prepared["tfrecord"], image_key="image", label_keys=["label"])
    with pytest.raises(
        DataError, match="No prepared TFDS data set 'shapez'.*Prepared there: shapes"
    ):
        sources.load(base | {"dataset": "shapez"})
    with pytest.raises(DataError, match="no prepared version '2.0.0'.*prepared: 1.0.0"):
        sources.load(base | {"dataset": "shapes", "version": "2.0.0"})
    with pytest.raises(DataError, match="no split 'validation'.*prepared splits: "):
        sources.load(base | {"dataset": "shapes", "splits": ["train", "validation"]})
    with pytest.raises(ConfigError, match="no feature 'labels'.*features: "):
        sources.load(base | {"dataset": "shapes", "label_keys": ["labels"]})
    with pytest.raises(DataError, match="does not exist.*never downloads"):
        sources.load(base | {"dataset": "shapes", "data_dir": str(tmp_path / "none")})
