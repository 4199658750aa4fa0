"""Where the PyTorch peers run: `--torch_device` (auto: CUDA when PyTorch sees a GPU, as JAX
then runs on it too), and a `synchronize` that ends a timed call only when the GPU is done."""

from __future__ import annotations

from typing import Any

from absl import flags

TORCH_DEVICE = flags.DEFINE_enum(
    "torch_device", "auto", ["auto", "cpu", "cuda"], "Device of the PyTorch peers."
)
flags.FLAGS["torch_device"].allow_override = True


def device():
    """The peers' `torch.device`."""
    import torch

    name = TORCH_DEVICE.value if flags.FLAGS.is_parsed() else "auto"
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def put(tree: Any) -> Any:
    """Every tensor in a dict / list / tuple of tensors, on the peers' device."""
    import torch

    if isinstance(tree, torch.Tensor):
        return tree.to(device())
    if isinstance(tree, dict):
        return {k: put(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(put(v) for v in tree)
    return tree


def synchronize() -> None:
    """Waits for the peers' queued GPU work (CUDA runs asynchronously); nothing on a CPU."""
    import torch

    if device().type == "cuda":
        torch.cuda.synchronize()
