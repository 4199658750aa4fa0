"""The `text_table` source and episode family on CSV, TSV and JSONL files the tests write:
missing labels masked, class names kept, sentence pairs, and every bad-input error."""

from __future__ import annotations

import numpy as np
import pytest

from mtl.data import sources, tables
from mtl.errors import ConfigError, DataError
from mtl.meta import families
from tests.own_data import write_table

HEADER = ["text", "topic", "mood"]
ROWS = [
    ["the plot drags on", "film", "bad"],
    ["great battery life", "", "good"],  # no topic: masked for that task
    ["a moving score", "film", "good"],
    ["the screen cracked", "phone", ""],
    ["loved the ending", "film", "good"],
    ["slow to charge", "phone", "bad"],
]


def source(minilm_dir, **options):
    return sources.load({"name": "text_table", "tokenizer_dir": minilm_dir, **options})


@pytest.mark.parametrize("ext", [".csv", ".tsv", ".jsonl"])
def test_a_table_is_one_task_per_label_column_with_missing_labels_masked(tmp_path, minilm_dir, ext):
    train = write_table(str(tmp_path / f"train{ext}"), HEADER, ROWS)
    test = write_table(str(tmp_path / f"test{ext}"), HEADER, ROWS[:2])
    data = source(minilm_dir, train=train, test=test, max_length=16)
    assert data.classes == {"topic": ("film", "phone"), "mood": ("bad", "good")}
    assert data.train["labels"]["topic"].tolist() == [0, -1, 0, 1, 0, 1]
    assert data.train["masks"]["topic"].tolist() == [True, False, True, True, True, True]
    assert data.train["masks"]["mood"].tolist() == [True, True, True, False, True, True]
    assert data.train["inputs"]["input_ids"].shape == (6, 16)
    assert data.test["labels"]["mood"].tolist() == [0, 1]


def test_sentence_pairs_declared_classes_and_a_held_out_fraction(tmp_path, minilm_dir):
    rows = [[f"premise {i}", f"hypothesis {i}", ["yes", "no"][i % 2]] for i in range(40)]
    train = write_table(str(tmp_path / "pairs.csv"), ["a", "b", "entails"], rows)
    data = source(minilm_dir, train=train, text_column="a", text_pair_column="b",
                  classes={"entails": ["no", "yes"]}, test_fraction=0.25)  # fmt: skip
    assert data.classes == {"entails": ("no", "yes")}
    n_train, n_test = (len(d["labels"]["entails"]) for d in (data.train, data.test))
    assert n_train + n_test == 40 and 4 <= n_test <= 16
    segments = data.train["inputs"]["token_type_ids"][0]
    assert set(segments.tolist()) == {0, 1}  # the pair's second sentence is segment 1


def test_table_errors_name_the_file_row_column_and_fix(tmp_path, minilm_dir):
    train = write_table(str(tmp_path / "t.csv"), HEADER, ROWS)
    with pytest.raises(ConfigError, match="no column 'txt'.*Did you mean 'text'"):
        source(minilm_dir, train=train, text_column="txt")
    with pytest.raises(DataError, match=r"t.csv, row 3, column 'mood': label 'good' is not"):
        source(minilm_dir, train=train, classes={"mood": ["bad", "meh"]})
    latin = tmp_path / "latin.csv"
    latin.write_bytes("text,mood\ncaf\xe9 ok,good\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin.csv, line 2: not UTF-8.*iconv"):
        source(minilm_dir, train=str(latin))
    empty = write_table(str(tmp_path / "e.csv"), HEADER, [["", "film", "bad"]])
    with pytest.raises(DataError, match=r"e.csv, row 2, column 'text': the text is empty"):
        source(minilm_dir, train=empty, test=empty)
    unknown = write_table(str(tmp_path / "test.csv"), HEADER, [["x", "radio", "bad"]])
    with pytest.raises(DataError, match=r"test.csv, row 2, column 'topic': label 'radio'"):
        source(minilm_dir, train=train, test=unknown)
    broken = tmp_path / "b.jsonl"
    broken.write_text('{"text": "ok", "mood": "good"}\n{"text": "cut\n')
    with pytest.raises(DataError, match=r"b.jsonl, line 2: not valid JSON"):
        tables.read_table(str(broken))
    with pytest.raises(ConfigError, match="unknown table format '.xlsx'"):
        tables.read_table(str(tmp_path / "t.xlsx"))


def test_a_table_is_an_episode_source_over_each_columns_classes(tmp_path, minilm_dir):
    rows = [[f"sentence {i} of class {c}", f"c{c}"] for c in range(6) for i in range(5)]
    table = write_table(str(tmp_path / "few.csv"), ["text", "intent"], rows)
    family = families.load(dict(name="text_table", table=table, tokenizer_dir=minilm_dir,
                                max_length=12, split_fractions=(0.5, 0.17, 0.33)))  # fmt: skip
    names = family.class_names
    assert [len(names[s]) for s in ("train", "val", "test")] == [3, 1, 2]
    assert set(names["train"]) | set(names["val"]) | set(names["test"]) == {
        f"intent/c{c}" for c in range(6)}  # fmt: skip
    episodes = family.sample("train", 0, 0, batch=2, ways=3, shots=1, queries=2)
    assert episodes["support"]["x"]["input_ids"].shape == (2, 3, 12)
    assert episodes["query"]["y"].shape == (2, 6)
    with pytest.raises(ConfigError, match="need 6 examples of each class"):
        family.check("train", 3, 2, 4)
    _, shape, preprocess = families.describe(
        dict(name="text_table", table=table, tokenizer_dir=minilm_dir, max_length=12)
    )
    assert preprocess(["a new sentence"])["input_ids"].shape == (1, 12)
    assert shape["input_ids"] == (12,)
    assert np.all(family.splits["test"].counts == 5)
