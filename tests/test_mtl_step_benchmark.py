"""benchmarks/mtl_step.py on its bert trunk: the two TorchJD peers (the Jacobian route and the
Gramian engine) must make the same update, or the Gram-route rows compare unlike steps; and a
malformed `--bert_sizes` is a usage error."""

import numpy as np
import pytest
import torch
from absl import app, flags
from absl.testing import flagsaver

from benchmarks import mtl_step

TINY_BERT = dict(trunk="bert", bert_sizes=["64", "2", "8"], batch_size=12, num_tasks=3)


@pytest.fixture(autouse=True)
def parsed_flags():
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()  # the defaults, as the benchmark's own command line
    with flagsaver.flagsaver(**TINY_BERT):
        yield


def _trunk_update_of_one_step(spec: str) -> list[np.ndarray]:
    """The combined gradient the step gave the trunk (left in `.grad` after the step)."""
    batch = mtl_step.make_batch(3, 12)
    setup = mtl_step.torch_setup(batch, 3)
    mtl_step.jd_step(spec, setup)()
    return [p.grad.numpy().copy() for p in setup.shared]


@pytest.mark.parametrize("aggregator", ["UPGrad", "PCGrad"])
def test_torchjd_gramian_engine_makes_its_jacobian_route_update_on_the_bert_trunk(aggregator):
    jacobian = _trunk_update_of_one_step(aggregator)
    gramian = _trunk_update_of_one_step(f"autogram:{aggregator}")
    scale = max(np.abs(g).max() for g in jacobian)
    assert scale > 1e-3
    for a, b in zip(gramian, jacobian, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5 * scale)


def test_bert_trunk_is_the_same_shape_on_both_sides():
    ours = mtl_step.bert_shape()
    torch_bert = mtl_step.TorchBert()
    peer = torch_bert.bert.config
    assert (peer.hidden_size, peer.num_hidden_layers, peer.num_attention_heads) == (
        ours["hidden"], ours["layers"], ours["heads"],
    )  # fmt: skip
    assert peer.intermediate_size == ours["ffn"] == 256
    x = torch.ones((2, 2, 8), dtype=torch.long)
    assert torch_bert(x).shape == (2, 64)


@pytest.mark.parametrize("sizes", [["64", "2"], ["64", "two", "8"], ["100", "2", "8"]])
def test_malformed_bert_sizes_are_a_usage_error(sizes):
    with flagsaver.flagsaver(bert_sizes=sizes), pytest.raises(app.UsageError, match="bert_sizes"):
        mtl_step.bert_sizes()
