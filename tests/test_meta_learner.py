"""The adapt/predict API on raw Omniglot images, as a user would call it from a notebook."""

import re
import zipfile

import numpy as np
import pytest
from PIL import Image

from configs import omniglot_maml, omniglot_protonets
from mtl.errors import ConfigError
from mtl.runs import meta as meta_train
from mtl.runs.meta import load_learner

MEMBER = re.compile(r"^[^/]+/([^/]+)/character(\d+)/(\d+)_(\d+)\.png$")


def _tiny(config, omniglot_dir, tfds_dir):
    config.data.update(data_dir=omniglot_dir, tfds_dir=tfds_dir)
    config.model.conv4.filters = 4
    config.num_steps = 2
    config.log_every = 1
    config.meta.update(meta_batch=8, queries=2)
    config.eval.update(episodes=8, batch=8, inner_steps=1, val_every=0)
    return config


def _raw_characters(omniglot_dir, count):
    """`count` characters (one alphabet), 3 drawings each: raw bool images and their keys."""
    images, keys = [], []
    with zipfile.ZipFile(f"{omniglot_dir}/images_background_small1.zip") as z:
        members = sorted(n for n in z.namelist() if MEMBER.match(n))
        alphabet = MEMBER.match(members[0]).group(1)
        for char in range(1, count + 1):
            mine = [n for n in members if f"/{alphabet}/character{char:02d}/" in n][:3]
            for name in mine:
                with z.open(name) as f:
                    images.append(np.asarray(Image.open(f)))
                _, c, _, drawer = MEMBER.match(name).groups()
                keys.append((alphabet, int(c) - 1, int(drawer)))
    return np.stack(images), keys


@pytest.fixture(scope="module")
def maml_workdir(tmp_path_factory, omniglot_images, omniglot_dir, omniglot_tfds_dir):
    workdir = str(tmp_path_factory.mktemp("omniglot_maml"))
    config = _tiny(omniglot_maml.get_config(), omniglot_dir, omniglot_tfds_dir)
    results = meta_train.train(config, workdir)["meta_test"]
    assert len(results["test"]["5way_1shot"]["mean"]) == 2  # before and after one step
    return workdir


def test_adapt_on_raw_105px_images_uses_training_preprocessing(
    maml_workdir, omniglot_dir, omniglot_images
):
    learner = load_learner(maml_workdir)
    assert learner.step == 2
    raw, keys = _raw_characters(omniglot_dir, 5)
    assert raw.shape[1:] == (105, 105) and raw.dtype == bool
    # The API's preprocessing gives exactly the training images of those files.
    data = omniglot_images
    for image, (alphabet, character, drawer) in zip(learner.preprocess(raw), keys, strict=True):
        row = np.flatnonzero(
            (np.asarray(data.alphabets)[data.alphabet] == alphabet)
            & (data.character == character)
            & (data.drawer == drawer)
        )
        np.testing.assert_array_equal(image, data.images[row[0]])

    labels = np.repeat(np.array(["ka", "ki", "ku", "ke", "ko"]), 3)
    support = np.arange(15) % 3 == 0  # one shot per character, two queries each
    adapted = learner.adapt(raw[support], labels[support], steps=3)
    predicted = adapted.predict(raw[~support])
    assert predicted.shape == (10,) and set(predicted) <= set(labels)
    assert adapted.outputs(raw[~support]).shape == (10, 5)


def test_learned_head_refuses_other_ways_with_the_fix(maml_workdir, omniglot_dir):
    learner = load_learner(maml_workdir)
    raw, _ = _raw_characters(omniglot_dir, 20)
    with pytest.raises(ConfigError, match=r"meta-learned for 5 ways.*head_init=zero or proto"):
        learner.adapt(raw[::3], np.arange(20))


def test_protonets_learner_adapts_to_twenty_ways(
    tmp_path, omniglot_images, omniglot_dir, omniglot_tfds_dir
):
    config = _tiny(omniglot_protonets.get_config(), omniglot_dir, omniglot_tfds_dir)
    config.meta.ways = 5
    meta_train.train(config, str(tmp_path))
    learner = load_learner(str(tmp_path))
    raw, _ = _raw_characters(omniglot_dir, 20)
    labels = np.repeat(np.arange(100, 120), 3)
    support = np.arange(60) % 3 == 0
    predicted = learner.adapt(raw[support], labels[support]).predict(raw[~support])
    assert predicted.shape == (40,) and set(predicted) <= set(labels)
