"""Episode sampling: reproducible, well-formed, honest about what a data set can supply."""

import numpy as np
import pytest

from mtl.errors import ConfigError
from mtl.meta.episodes import ClassDataset, check_episodes, sample_episodes
from mtl.meta.omniglot import omniglot_family, split_characters
from mtl.meta.sinusoid import SinusoidFamily


def _toy(num_classes=7, per_class=6):
    labels = np.repeat(np.arange(num_classes) * 10, per_class)  # sparse ids on purpose
    inputs = np.arange(len(labels), dtype=np.float32)[:, None]  # input = its own row number
    return ClassDataset(inputs, labels, name="toy")


def test_episodes_are_reproducible_and_differ_by_index():
    data = _toy()
    a = sample_episodes(data, 3, 5, batch=4, ways=3, shots=2, queries=3)
    b = sample_episodes(data, 3, 5, batch=4, ways=3, shots=2, queries=3)
    c = sample_episodes(data, 3, 6, batch=4, ways=3, shots=2, queries=3)
    np.testing.assert_array_equal(a["support"]["x"], b["support"]["x"])
    np.testing.assert_array_equal(a["query"]["x"], b["query"]["x"])
    assert not np.array_equal(a["support"]["x"], c["support"]["x"])


def test_episode_structure_classes_and_disjoint_rows():
    data = _toy()
    eps = sample_episodes(data, 0, 0, batch=16, ways=3, shots=2, queries=3)
    assert eps["support"]["x"].shape == (16, 6, 1)
    assert eps["query"]["x"].shape == (16, 9, 1)
    for t in range(16):
        s_rows = eps["support"]["x"][t, :, 0].astype(int)
        q_rows = eps["query"]["x"][t, :, 0].astype(int)
        assert not set(s_rows) & set(q_rows)  # no example in both
        assert len(set(s_rows) | set(q_rows)) == 15  # without replacement
        true = np.concatenate([data.labels[s_rows], data.labels[q_rows]])
        label = np.concatenate([eps["support"]["y"][t], eps["query"]["y"][t]])
        # Each episode label is exactly one class, and classes differ between labels.
        mapping = {lab: set(true[label == lab]) for lab in range(3)}
        assert all(len(v) == 1 for v in mapping.values())
        assert len(set.union(*mapping.values())) == 3
        np.testing.assert_array_equal(np.bincount(eps["support"]["y"][t]), [2, 2, 2])
    # Label order is random: label 0 is not always the smallest class.
    firsts = {int(data.labels[int(eps["support"]["x"][t, 0, 0])]) for t in range(16)}
    assert len(firsts) > 1


def test_sampler_names_the_limit():
    data = _toy(num_classes=7, per_class=6)
    with pytest.raises(ConfigError, match=r"8-way episodes need 8 classes but toy has 7"):
        check_episodes(data, 8, 1, 1)
    with pytest.raises(ConfigError, match=r"shots \+ queries <= 6"):
        check_episodes(data, 5, 2, 5)
    with pytest.raises(ConfigError, match="shots must be an integer"):
        check_episodes(data, 5, 0, 5)


def test_character_split_is_disjoint_and_seeded():
    a = split_characters(242, (0.65, 0.1, 0.25), seed=0)
    b = split_characters(242, (0.65, 0.1, 0.25), seed=0)
    c = split_characters(242, (0.65, 0.1, 0.25), seed=1)
    assert sum(len(v) for v in a.values()) == 242
    assert not set(a["train"]) & set(a["test"]) and not set(a["val"]) & set(a["test"])
    assert not set(a["train"]) & set(a["val"])
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["test"], c["test"])
    with pytest.raises(ConfigError, match="summing to 1"):
        split_characters(242, (0.5, 0.1, 0.1), seed=0)


def test_omniglot_meta_splits_share_no_character(omniglot_images):
    family = omniglot_family(omniglot_images)
    chars = omniglot_images.class_ids()
    assert chars.max() + 1 == 242 and len(chars) == 4840
    seen = {}
    for name, split in family.splits.items():
        # class = character * 4 + quarter turns: four classes per character
        characters = np.unique(split.classes // 4)
        assert split.num_classes == 4 * len(characters)
        assert set(np.unique(split.counts)) == {20}
        seen[name] = set(characters.tolist())
    assert not seen["train"] & seen["test"] and not seen["val"] & seen["test"]
    assert not seen["train"] & seen["val"]
    assert sum(len(v) for v in seen.values()) == 242
    # A rotated class really holds rotated images of its character.
    test = family.splits["test"]
    c = int(test.classes[1])  # character c // 4 turned once
    rows = test.index[1, : test.counts[1]]
    base_rows = test.index[0, : test.counts[0]]
    assert test.classes[0] == c - 1
    np.testing.assert_array_equal(test.inputs[rows[0]], np.rot90(test.inputs[base_rows[0]]))
    eps = family.sample("test", 0, 0, batch=2, ways=20, shots=5, queries=15)
    assert eps["support"]["x"].shape == (2, 100, 28, 28, 1)
    with pytest.raises(ConfigError, match="need 1000 classes"):
        family.check("test", 1000, 1, 1)


def test_sinusoid_tasks_follow_the_paper():
    family = SinusoidFamily()
    eps = family.sample("train", 0, 0, batch=500, ways=1, shots=10, queries=10)
    x = np.concatenate([eps["support"]["x"], eps["query"]["x"]], 1)
    y = np.concatenate([eps["support"]["y"], eps["query"]["y"]], 1)
    assert x.shape == (500, 20, 1) and x.min() >= -5 and x.max() <= 5
    amp = np.abs(y).max(1)
    assert amp.max() <= 5.0 and amp.min() >= 0.0
    # Every task is one sinusoid A sin(x - phase): least squares on [sin x, cos x] fits it.
    for t in range(5):
        basis = np.concatenate([np.sin(x[t]), np.cos(x[t])], 1)
        coef, res, *_ = np.linalg.lstsq(basis, y[t, :, 0], rcond=None)
        assert 0.1 - 1e-4 <= np.hypot(*coef) <= 5.0 + 1e-4 and res.sum() < 1e-8
    other = family.sample("test", 0, 0, batch=500, ways=1, shots=10, queries=10)
    assert not np.allclose(other["support"]["x"], eps["support"]["x"])
    with pytest.raises(ConfigError, match="ways must be 1"):
        family.check("train", 5, 10, 10)
