"""The stateless batch sampler and padded evaluation batches."""

import numpy as np

from mtl.data import arrays
from tests.helpers import toy_batch


def test_batches_cover_each_epoch_once_and_depend_only_on_seed_and_step():
    n, b = 10, 4
    drawn = np.concatenate([arrays.batch_indices(0, s, n, b) for s in range(5)])  # 2 epochs
    assert sorted(drawn[:10]) == list(range(10)) and sorted(drawn[10:20]) == list(range(10))
    np.testing.assert_array_equal(arrays.batch_indices(0, 3, n, b), drawn[12:16])
    assert not np.array_equal(arrays.batch_indices(1, 0, n, b), drawn[:4])


def test_eval_batches_pad_with_masked_rows():
    data = toy_batch(10)
    batches = list(arrays.eval_batches(data, 4))
    assert [len(b["inputs"]) for b in batches] == [4, 4, 4]
    for field in ("a", "b", "r"):
        seen = np.concatenate([b["masks"][field] for b in batches])
        assert seen.sum() == data["masks"][field].sum()
        assert not seen[10:].any()


def test_select_fields_drops_unlabelled_examples():
    data = toy_batch(50)
    only_a = arrays.select_fields(data, ["a"])
    assert set(only_a["labels"]) == {"a"}
    assert only_a["masks"]["a"].all()
    assert arrays.num_examples(only_a) == data["masks"]["a"].sum()
