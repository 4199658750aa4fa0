"""benchmarks/adapt times the same procedure on both sides: on the same weights and sentences,
our learner and the PyTorch + transformers peer predict the same labels."""

import numpy as np
import pytest

from benchmarks import adapt as bench


@pytest.mark.parametrize("method", ["probe", "setfit"])
def test_peer_predicts_what_our_learner_predicts(tiny_hf_dir, tiny_ckpt, method):
    support, labels, queries = bench.episode(shots=3, queries=8, seed=2)
    steps = (5, 2)
    ours = bench.ours(tiny_ckpt, method, support, labels, queries, *steps)()
    theirs = bench.peer(tiny_hf_dir, method, support, labels, queries, *steps)()
    np.testing.assert_array_equal(np.asarray(ours), theirs.numpy())
