"""SentEval through the `senteval` TFDS builder: splits, sizes, seeding, errors, token arrays."""

import collections
import os
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds
from etils import epath

from mtl.data import senteval_tfds, sources, text
from mtl.data.senteval import load_senteval, resolve_data_dir, subsample
from mtl.data.senteval_tfds import TASKS, read_examples, split_examples
from mtl.errors import ConfigError, DataError

# (train, dev, test) sizes; MR, SUBJ, MPQA and TREC's dev split are seeded (see the builder).
SIZES = {
    "mr": (8529, 1066, 1067),
    "subj": (8000, 1000, 1000),
    "mpqa": (8414, 1140, 1049),
    "sst2": (67349, 872, 1821),
    "sst5": (8544, 1101, 2210),
    "trec_coarse": (4903, 549, 500),
    "trec_fine": (4903, 549, 500),
}


@pytest.fixture(autouse=True)
def no_download(monkeypatch):
    def download(*args, **kwargs):
        raise AssertionError("SentEval must never be downloaded.")

    monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract", download)
    monkeypatch.setattr(tfds.download.DownloadManager, "download", download)


@pytest.fixture(scope="module")
def splits(senteval_dir):
    root = epath.Path(senteval_dir)
    return {task: split_examples(task, read_examples(root, task)) for task in TASKS}


def test_sizes_labels_and_disjoint_sentences(splits):
    for task, parts in splits.items():
        assert tuple(len(parts[s]) for s in ("train", "dev", "test")) == SIZES[task], task
        sentences = {s: {row[1] for row in rows} for s, rows in parts.items()}
        shared = [
            sentences["train"] & sentences["test"],
            sentences["train"] & sentences["dev"],
            sentences["dev"] & sentences["test"],
        ]
        if TASKS[task].split == "official":  # as published: a few short sentences recur
            assert set().union(*shared) <= {"no . .", "no. .", "what 's next ?", "hey arnold !"}
        elif TASKS[task].split == "trec":  # our dev split is disjoint; the official test
            assert not shared[1], task  # shares 10 questions with train_5500
            assert len(shared[0] | shared[2]) == 10, task
        else:
            assert not any(shared), task
        labels = np.array([row[2] for rows in parts.values() for row in rows])
        assert labels.min() == 0 and labels.max() == len(TASKS[task].labels) - 1, task
        keys = [row[0] for rows in parts.values() for row in rows]
        assert len(set(keys)) == len(keys), task  # every line used once


def test_seeded_splits_are_fixed_by_the_seed(splits, senteval_dir, monkeypatch):
    root = epath.Path(senteval_dir)
    again = split_examples("mr", read_examples(root, "mr"))
    assert again == splits["mr"]
    # TREC coarse and fine use the same sentences in each split.
    for split in ("train", "dev", "test"):
        assert [r[0] for r in splits["trec_coarse"][split]] == [
            r[0] for r in splits["trec_fine"][split]
        ]
    monkeypatch.setattr(senteval_tfds, "SPLIT_SEED", senteval_tfds.SPLIT_SEED + 1)
    other = split_examples("mr", read_examples(root, "mr"))
    assert {r[0] for r in other["test"]} != {r[0] for r in splits["mr"]["test"]}
    assert [len(other[s]) for s in ("train", "dev", "test")] == list(SIZES["mr"])


def test_parsing_of_each_format(splits):
    trec = {r[0]: r for r in splits["trec_fine"]["test"]}
    key, sentence, label = trec["TREC/TREC_10.label:1"]
    assert sentence == "How far is it from Denver to Aspen ?"
    assert TASKS["trec_fine"].labels[label] == "NUM:dist"
    coarse = {r[0]: r for r in splits["trec_coarse"]["test"]}
    assert TASKS["trec_coarse"].labels[coarse[key][2]] == "NUM"
    sst2 = {r[0]: r for r in splits["sst2"]["dev"]}["SST2/sentiment-dev:2"]
    assert sst2[1:] == ("unflinchingly bleak and desperate", 0)
    sst5 = {r[0]: r for r in splits["sst5"]["dev"]}["SST5/sentiment-dev:2"]
    assert sst5[1:] == ("one long string of cliches .", 1)
    mr = [r for rows in splits["mr"].values() for r in rows]
    assert collections.Counter(r[2] for r in mr) == {0: 5331, 1: 5331}
    rows = splits["trec_coarse"]["train"] + splits["trec_coarse"]["dev"]
    latin1 = [r[1] for r in rows if not r[1].isascii()]  # train_5500 is latin-1
    assert latin1 == [
        "Which city has the oldest relationship as a sister\xf0city with Los Angeles ?"
    ]


def test_builder_prepares_what_the_split_function_gives(splits, senteval_dir, senteval_tfds_dir):
    loaded = load_senteval("trec_fine", senteval_dir, senteval_tfds_dir)
    for split, rows in splits["trec_fine"].items():
        sentences, labels = loaded[split]
        assert labels.dtype == np.int32
        assert sorted(zip(sentences, labels.tolist(), strict=True)) == sorted(
            (r[1], r[2]) for r in rows
        )


def check_fast(call, tfds_dir):
    start = time.perf_counter()
    try:
        call()
    finally:
        assert time.perf_counter() - start < 2.0
        assert not os.listdir(tfds_dir)


def test_missing_or_incomplete_data_dir(tmp_path, monkeypatch):
    tfds_dir = tmp_path / "tfds"
    tfds_dir.mkdir()
    with pytest.raises(DataError, match="does not exist") as error:
        check_fast(lambda: load_senteval("mr", str(tmp_path / "nowhere"), str(tfds_dir)), tfds_dir)
    assert "--config.data.data_dir" in str(error.value) and "MTL_SENTEVAL_DIR" in str(error.value)
    (tmp_path / "data" / "MR").mkdir(parents=True)
    (tmp_path / "data" / "MR" / "rt-polarity.pos").write_text("good .\n")
    with pytest.raises(DataError, match=r"lacks MR/rt-polarity\.neg"):
        check_fast(lambda: load_senteval("mr", str(tmp_path / "data"), str(tfds_dir)), tfds_dir)
    monkeypatch.delenv("MTL_SENTEVAL_DIR", raising=False)
    with pytest.raises(DataError, match="MTL_SENTEVAL_DIR"):
        resolve_data_dir(None)
    monkeypatch.setenv("MTL_SENTEVAL_DIR", "/from/env")
    assert resolve_data_dir(None) == "/from/env" and resolve_data_dir("/x") == "/x"
    with pytest.raises(ConfigError, match="Did you mean 'trec_fine'"):
        load_senteval("trec_fin", str(tmp_path), str(tfds_dir))


def test_text_source_token_arrays_masks_and_subsets(senteval_dir, senteval_tfds_dir, minilm_dir):
    def load(**kwargs):
        options = dict(
            tasks=("trec_coarse", "trec_fine"),
            data_dir=senteval_dir,
            tfds_dir=senteval_tfds_dir,
            tokenizer_dir=minilm_dir,
            max_length=24,
            max_train_examples=50,
        )
        return sources.load({"name": "senteval", **(options | kwargs)})

    data = load()
    train, test = data.train, data.test
    assert set(train["inputs"]) == {"input_ids", "attention_mask", "token_type_ids"}
    assert train["inputs"]["input_ids"].shape == (100, 24)
    assert train["inputs"]["input_ids"].dtype == np.int32
    assert np.all(train["inputs"]["input_ids"][:, 0] == 101)  # [CLS]
    assert len(test["inputs"]["input_ids"]) == 1000  # both full test sets
    masks = np.stack([train["masks"]["trec_coarse"], train["masks"]["trec_fine"]], 1)
    assert np.all(masks.sum(1) == 1) and masks[:, 0].sum() == 50
    assert np.all(train["labels"]["trec_fine"][~train["masks"]["trec_fine"]] == -1)
    # Subsets depend on the seed only.
    again = load()
    np.testing.assert_array_equal(again.train["inputs"]["input_ids"], train["inputs"]["input_ids"])
    other = load(seed=1)
    assert not np.array_equal(other.train["inputs"]["input_ids"], train["inputs"]["input_ids"])
    s, y = subsample(list("abcdef"), np.arange(6), 3, seed=0, task="x")
    assert len(s) == 3 and list(y) == sorted(y) and [("abcdef")[i] for i in y] == s


def test_trim_padding_and_tokenizer_errors(tmp_path, minilm_dir):
    mask = np.array([[1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0, 0, 0]])
    inputs = {"input_ids": mask * 7, "attention_mask": mask}
    assert text.trim_padding(inputs, 4)["input_ids"].shape == (2, 8)
    assert text.trim_padding(inputs, 2)["attention_mask"].shape == (2, 6)
    assert text.trim_padding(inputs, 0)["input_ids"].shape == (2, 8)

    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"tokenizer\.json or vocab\.txt"):
        text.load_tokenizer(str(tmp_path / "empty"))
    with pytest.raises(DataError, match="does not exist"):
        text.check_tokenizer_dir(str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="--config.data.tokenizer_dir"):
        text.check_tokenizer_dir("")
    text.copy_tokenizer(minilm_dir, str(tmp_path / "run" / "tokenizer"))
    assert text.check_tokenizer_dir(str(tmp_path / "run")) == str(tmp_path / "run" / "tokenizer")
