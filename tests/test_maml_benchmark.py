"""benchmarks/maml_step times the same computation in every implementation: the PyTorch
peers, given our weights, compute our second-order meta-gradient."""

import jax
import numpy as np

from benchmarks import maml_step as bench


def test_torch_peers_compute_our_meta_gradient():
    learner, meta, mstate = bench.our_learner("matmul", filters=4)
    episodes = bench.make_episodes(seed=1, tasks=2, queries=2)
    meta_grads = jax.jit(lambda m, s, e: learner.meta_grads(m, s, e, ways=bench.WAYS, step=0))
    grads, _ = meta_grads(meta, mstate, episodes)
    grads = jax.tree_util.tree_map(np.asarray, grads["params"])

    data = bench.torch_episodes(episodes)
    for peer in ("torch.func", "higher"):  # ours compiled once for both
        model = bench.TorchConv4(filters=4, same=True).load_jax(meta["params"])
        if peer == "torch.func":
            bench.torch_func_meta_loss(model, data, bench.INNER_LR).backward()
        else:
            bench.higher_meta_backward(model, data, bench.INNER_LR)
        _compare(model, grads)


def _compare(model, grads):
    """The peer's `.grad` of every parameter against ours (Flax layouts)."""
    close = lambda t, ours: np.testing.assert_allclose(t.grad.numpy(), ours, rtol=2e-3, atol=2e-5)
    blocks = grads["trunk"]["blocks"]
    for i, (conv, norm) in enumerate(zip(model.convs, model.norms, strict=True)):
        close(conv.weight, blocks[i]["conv"]["kernel"].transpose(3, 2, 0, 1))
        close(conv.bias, blocks[i]["conv"]["bias"])
        close(norm.weight, blocks[i]["norm"]["scale"])
        close(norm.bias, blocks[i]["norm"]["bias"])
    close(model.head.weight, grads["head"]["out"]["kernel"].T)
    close(model.head.bias, grads["head"]["out"]["bias"])
    assert np.abs(grads["trunk"]["blocks"][0]["conv"]["kernel"]).max() > 0
