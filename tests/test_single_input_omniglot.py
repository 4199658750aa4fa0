"""Omniglot as a single-input problem: every image labelled for alphabet, character and its
own rotation (`rotate_every_image`, `configs/omniglot_single_input.py`)."""

from __future__ import annotations

import numpy as np
import pytest

from configs import omniglot_single_input
from mtl.data import sources
from mtl.data.rotation import rotate_every_image
from mtl.errors import ConfigError, DataError
from mtl.runs import supervised


def test_every_image_is_rotated_and_keeps_its_labels():
    rng = np.random.default_rng(0)
    images = rng.random((200, 6, 6, 1)).astype(np.float32)
    data = {
        "inputs": images,
        "labels": {"a": np.arange(200, dtype=np.int32)},
        "masks": {"a": np.arange(200) % 3 > 0},
    }
    out = rotate_every_image(data, seed=3)
    k = out["labels"]["rotation"]
    assert out["inputs"].shape == images.shape and set(k) == {0, 1, 2, 3}
    for i in range(200):
        np.testing.assert_array_equal(np.rot90(out["inputs"][i], -k[i], axes=(0, 1)), images[i])
    np.testing.assert_array_equal(out["labels"]["a"], data["labels"]["a"])
    np.testing.assert_array_equal(out["masks"]["a"], data["masks"]["a"])
    assert out["masks"]["rotation"].all()
    np.testing.assert_array_equal(rotate_every_image(data, seed=3)["labels"]["rotation"], k)
    with pytest.raises(DataError, match="already has a label field 'a'"):
        rotate_every_image(data, field="a")
    with pytest.raises(DataError, match="square images"):
        rotate_every_image({**data, "inputs": rng.random((200, 6, 4, 1))})


def test_rotation_and_rotate_every_image_are_exclusive():
    with pytest.raises(ConfigError, match="set only one"):
        sources.omniglot_alphabets(rotation=True, rotate_every_image=True)


def test_the_omniglot_single_input_run_labels_every_image_and_learns(
    omniglot_images, omniglot_dir, omniglot_tfds_dir, tmp_path
):
    config = omniglot_single_input.get_config()
    config.data.data_dir, config.data.tfds_dir = omniglot_dir, omniglot_tfds_dir
    data = supervised.load_data(config, supervised.check(config)[0])
    for split in (data.train, data.test):
        assert all(split["masks"][f].all() for f in omniglot_single_input.TASKS)
        # A character belongs to one alphabet.
        pairs = set(zip(split["labels"]["character"], split["labels"]["alphabet"], strict=True))
        assert len(pairs) == len({c for c, _ in pairs})
    counts = np.bincount(data.train["labels"]["rotation"], minlength=4)
    assert counts.min() > 0.2 * len(data.train["labels"]["rotation"])

    config.update(dict(num_steps=60, batch_size=64, eval_batch_size=512, log_every=20))
    config.model.conv4.filters = 16
    config.optimizer.learning_rate = 1e-2
    result = supervised.train(config, str(tmp_path))
    accuracy = {t: result["test"][t]["accuracy"] for t in omniglot_single_input.TASKS}
    # Above chance for each task (8 alphabets, 242 characters, 4 rotations) after 60 steps
    # (measured: 0.27, 0.010, 0.43).
    assert accuracy["alphabet"] > 1.5 / 8 and accuracy["rotation"] > 1.3 / 4, accuracy
    assert accuracy["character"] > 1.5 / 242, accuracy
