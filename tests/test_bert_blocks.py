"""benchmarks/bert_blocks: each block computes what transformers' module computes."""

import pytest

from benchmarks import bert_blocks


@pytest.mark.parametrize("fused", [False, True])
def test_blocks_match_transformers_and_time(minilm_dir, fused):
    rows = bert_blocks.compare(
        minilm_dir, bert_blocks.BLOCKS, batch=2, seq=12, rounds=1, steps=1, fused=fused
    )
    assert [r["block"] for r in rows] == list(bert_blocks.BLOCKS)
    for row in rows:
        assert row["difference"] < 1e-4, row  # same weights, same states, same mask
        assert row["ours"] > 0 and row["pytorch"] > 0
    assert "| attention |" in bert_blocks.table(rows)


def test_profile_reports_our_ops(minilm_dir):
    (row,) = bert_blocks.compare(
        minilm_dir, ["feed_forward"], batch=2, seq=8, rounds=1, steps=1, profile=True
    )
    assert "XLA busy time" in row["profile"]


def test_unknown_block_is_refused(minilm_dir):
    with pytest.raises(ValueError, match="pick from attention"):
        bert_blocks.compare(minilm_dir, ["pooler"], batch=2, seq=8, rounds=1, steps=1)
