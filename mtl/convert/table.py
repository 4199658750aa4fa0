"""Checkpoint tensors -> a trunk's parameters, one table row per tensor, every tensor used once.

A family's conversion is a `Layout`: the table of rows `(our path, checkpoint name, transform)`
for a given target, how checkpoint names are normalised (prefixes of task models, old names),
and which checkpoint tensors are expected to go unused (buffers, parts the target does not
build). `convert` applies the rows, then insists that every checkpoint tensor and every target
parameter was used exactly once; otherwise it raises one `ConversionError` listing the tensors
left over, the parameters left empty and the shape mismatches, with a hint.

    layout = Layout("resnet", rows=lambda target: [("stem/conv/kernel", "conv1.weight",
                                                    conv_kernel), ...])
    params = convert(layout, read_weights(path), nnx.to_pure_dict(state_of_shapes))
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from mtl.errors import DataError
from mtl.paths import flatten, unflatten

Transform = Callable[[np.ndarray], np.ndarray]
Row = tuple[str, str, Transform]


def keep(w: np.ndarray) -> np.ndarray:
    return w


def transpose(w: np.ndarray) -> np.ndarray:
    """PyTorch Linear [out, in] -> NNX Linear kernel [in, out]."""
    return np.ascontiguousarray(w.T)


def conv_kernel(w: np.ndarray) -> np.ndarray:
    """PyTorch Conv2d weight [out, in, h, w] -> NNX Conv kernel [h, w, in, out]."""
    return np.ascontiguousarray(w.transpose(2, 3, 1, 0))


class ConversionError(DataError):
    """The checkpoint's tensors and the model's parameters do not match one to one."""


@dataclasses.dataclass(frozen=True)
class Layout:
    """How the checkpoints of one family map onto one of our trunks.

    Attributes:
      trunk: our trunk's name, for messages ("bert", "resnet").
      rows: the table for a target, given the target's flat paths (so that the number of
        layers, or optional parts such as a pooler, follow what the target builds).
      normalize: a checkpoint name -> the name the rows use (strip `bert.`, rename old names).
      unused: regexes of checkpoint names that are expected to go unused for a target
        (buffers such as `position_ids`, a pooler the target does not build).
      layer_name: a regex whose first group is a layer index in a checkpoint name; with it a
        checkpoint with more layers than the target gets a hint naming both counts.
      layers_field: the config field that sets the number of layers (for that hint).
      size_fields: config fields that set tensor dimensions; a mismatch names the one the
        tensor disagrees with.
      leftover_hint: the hint when only leftovers are the problem.
      config_name: what the `config` passed to `convert` is called in messages.
      weights_name: what the weight file is called in messages.
    """

    trunk: str
    rows: Callable[[Sequence[str]], list[Row]]
    normalize: Callable[[str], str] = keep
    unused: Callable[[Sequence[str]], Sequence[str]] = lambda paths: ()
    layer_name: str | None = None
    layers_field: str = "num_layers"
    size_fields: tuple[str, ...] = ()
    leftover_hint: str = "tensors of a task head can be left out on purpose with drop=[regex]."
    config_name: str = "config.json"
    weights_name: str = "the weight file"


def convert(
    layout: Layout,
    weights: Mapping[str, np.ndarray],
    target: Mapping[str, Any],
    *,
    drop: Iterable[str] = (),
    config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The parameters of a trunk from checkpoint tensors.

    Args:
      layout: the family's table and naming rules.
      weights: checkpoint name -> array (`read_weights`, `state_dict_of`).
      target: the trunk's variables or their shapes (a nested dict whose leaves have `.shape`),
        e.g. `nnx.to_pure_dict(nnx.state(nnx.eval_shape(make), nnx.Param))`.
      drop: regexes of checkpoint names to leave out on purpose (a masked-LM head).
      config: the options the target was built from (its config.json), so that a shape
        mismatch can name the field the tensor disagrees with.

    Returns:
      A nested dict with the structure of `target`, float32 numpy leaves.

    Raises:
      ConversionError: listing leftovers on both sides and shape mismatches, all at once.
    """
    drop = [re.compile(p) for p in drop]
    source = _source_tensors(weights, layout.normalize)
    wanted = flatten(target)
    match = _match(layout.rows(list(wanted)), source, wanted)
    unused = [re.compile(p) for p in layout.unused(list(wanted))]
    leftover = sorted(
        name
        for name in source
        if name not in match.used and not any(p.search(name) for p in [*unused, *drop])
    )
    unfilled = sorted(set(wanted) - set(match.out) - match.bad_shape)
    problems = (leftover, match.missing, match.mismatched, unfilled)
    if any(problems):
        raise ConversionError(_report(layout, *problems, wanted, match.sizes, config))
    return unflatten(match.out)


def build_trunk(
    make: Callable[[], Any],
    layout: Layout,
    weights: Mapping[str, Any],
    *,
    drop: Iterable[str] = (),
    config: Mapping[str, Any] | None = None,
) -> Any:
    """The trunk `make()` builds, holding the converted `weights` (parameters and batch-norm
    statistics), by `convert`.

    Nothing is randomly initialised: the shapes come from `nnx.eval_shape`, and only the other
    state (dropout RNG streams), if the trunk has any, is computed, in one jitted call (eager
    initialisation of a hundred weights costs seconds of compiling on a CPU).
    """
    import jax
    import jax.numpy as jnp
    from flax import nnx

    variables = (nnx.Param, nnx.BatchStat)
    graphdef, state, rest = nnx.split(nnx.eval_shape(make), variables, ...)
    converted = convert(layout, weights, nnx.to_pure_dict(state), drop=drop, config=config)
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, converted))
    if jax.tree.leaves(rest):
        rest = jax.jit(lambda: nnx.split(make(), variables, ...)[2])()
    return nnx.merge(graphdef, state, rest)


def _source_tensors(weights: Mapping[str, Any], normalize) -> dict[str, np.ndarray]:
    """`weights` as numpy arrays under their normalised names; `ConversionError` if two
    names normalise to the same one."""
    source: dict[str, list[str]] = {}
    for name in weights:
        source.setdefault(normalize(name), []).append(name)
    duplicates = {k: v for k, v in source.items() if len(v) > 1}
    if duplicates:
        raise ConversionError(
            "The checkpoint holds the same weight under several names: "
            + "; ".join(" and ".join(v) for v in duplicates.values())
        )
    return {k: np.asarray(weights[v[0]]) for k, v in source.items()}


@dataclasses.dataclass
class _Match:
    """What `_match` made of the table rows."""

    out: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # our path -> value
    used: set[str] = dataclasses.field(default_factory=set)  # checkpoint names used
    bad_shape: set[str] = dataclasses.field(default_factory=set)  # our paths, shape mismatch
    sizes: set[tuple[int, int]] = dataclasses.field(default_factory=set)  # (model, tensor) dims
    missing: list[str] = dataclasses.field(default_factory=list)  # rows without a tensor/param
    mismatched: list[str] = dataclasses.field(default_factory=list)  # shape mismatch messages


def _match(rows: Iterable[Row], source: Mapping[str, np.ndarray], wanted) -> _Match:
    """Applies each row to `source`, checking the result against the shapes in `wanted`."""
    match = _Match()
    missing_source, missing_target = [], []
    for ours, theirs, transform in rows:
        if theirs not in source:
            missing_source.append(f"{theirs} (for {ours})")
            continue
        match.used.add(theirs)
        if ours not in wanted:  # only when the table and the trunk disagree: a bug here
            missing_target.append(f"{ours} (from {theirs})")
            continue
        value = transform(source[theirs])
        shape = tuple(wanted[ours].shape)
        if tuple(value.shape) != shape:
            match.bad_shape.add(ours)
            match.sizes |= {(w, g) for w, g in zip(shape, value.shape, strict=False) if w != g}
            match.mismatched.append(
                f"{theirs} {tuple(source[theirs].shape)} -> {ours}: the model needs {shape}"
            )
            continue
        match.out[ours] = value.astype(np.float32)
    match.missing = missing_source + missing_target
    return match


def _report(layout, leftover, missing, mismatched, unfilled, wanted, sizes, config) -> str:
    lines = [f"The checkpoint does not match the {layout.trunk} trunk one to one."]
    for title, items in (
        ("Checkpoint tensors left over", leftover),
        ("Table rows without a checkpoint tensor or model parameter", missing),
        ("Shape mismatches", mismatched),
        ("Model parameters left without a value", unfilled),
    ):
        if items:
            shown = "\n    ".join(items[:40]) + (
                f"\n    ... {len(items) - 40} more" if len(items) > 40 else ""
            )
            lines.append(f"  {title} ({len(items)}):\n    {shown}")
    lines.append("Hint: " + _hint(layout, leftover, mismatched, wanted, sizes, config))
    return "\n".join(lines)


def _hint(layout, leftover, mismatched, wanted, sizes, config) -> str:
    ours = _count_layers(layout, [t for _, t, _ in layout.rows(list(wanted))])
    theirs = _count_layers(layout, leftover)
    if theirs > ours:
        return (
            f"the checkpoint has {theirs} layers, the model {ours}: build the model from the "
            f"checkpoint's config or set model.{layout.trunk}.{layout.layers_field}."
        )
    disagree = sorted(
        f"{field}={config[field]} (a tensor has {got})"
        for field in layout.size_fields
        for want, got in sizes
        if config is not None and config.get(field) == want
    )
    if mismatched and disagree:
        # The model was built from config.json, so the weights and config.json disagree.
        return (
            f"{layout.config_name} says {', '.join(disagree)}: the weight file is damaged or "
            f"belongs to another model. Download or export {layout.weights_name} again "
            f"together with its own {layout.config_name} (or correct {layout.config_name} if "
            "the tensors are right)."
        )
    if mismatched:
        return (
            f"build the model from the checkpoint's config so that the {layout.trunk} options "
            "that set tensor shapes agree with the weights."
        )
    if leftover:
        return layout.leftover_hint
    return f"the table of the {layout.trunk} family and the trunk disagree (a bug here)."


def _count_layers(layout: Layout, names: Iterable[str]) -> int:
    """1 + the highest layer index in `names` (0 if none), by `layout.layer_name`."""
    if layout.layer_name is None:
        return 0
    found = [int(m.group(1)) for n in names if (m := re.search(layout.layer_name, n))]
    return max(found) + 1 if found else 0


# --- reading checkpoints -------------------------------------------------------------------


def read_weights(path: str) -> dict[str, np.ndarray]:
    """All tensors of a checkpoint as numpy arrays.

    `path` is a file (`.safetensors`, read without PyTorch; or a PyTorch state dict `.pth` /
    `.pt` / `.bin`, read with `torch.load(weights_only=True)`, which needs torch installed) or a
    Hugging Face directory (`model.safetensors`, or the shards its index lists).
    """
    if os.path.isdir(path):
        return _read_hf_dir(path)
    if not os.path.isfile(path):
        raise DataError(f"The checkpoint {path} does not exist.")
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        return _loaded(path, load_file)
    if path.endswith((".pth", ".pt", ".bin")):
        return _loaded(path, _torch_state_dict)
    raise DataError(
        f"{path}: unknown checkpoint format; give a .safetensors file, a PyTorch state dict "
        "(.pth, .pt, .bin) or a Hugging Face model directory."
    )


def _loaded(path: str, load) -> dict[str, np.ndarray]:
    try:
        return load(path)
    except DataError:
        raise
    except Exception as e:  # a truncated or damaged file: name it, whatever the reader says
        raise DataError(
            f"{path} cannot be read ({type(e).__name__}: {e}); the file is damaged or truncated:"
            " download or export it again."
        ) from e


def _torch_state_dict(path: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as e:
        raise DataError(
            f"{path} is a PyTorch file and torch is not installed: install torch, or convert "
            "the file to safetensors (safetensors.torch.save_file(state_dict, 'x.safetensors'))."
        ) from e
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "state_dict" in state:  # training checkpoints wrap it
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise DataError(f"{path} holds a {type(state).__name__}, not a state dict of tensors.")
    return state_dict_of_tensors(state)


def state_dict_of_tensors(state: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A PyTorch state dict (or `model.state_dict()`) as float32 / int numpy arrays."""
    out = {}
    for name, tensor in state.items():
        t = tensor.detach().cpu()
        out[name] = (t.float() if t.is_floating_point() else t).numpy()
    return out


def _read_hf_dir(hf_dir: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    single = os.path.join(hf_dir, "model.safetensors")
    index = os.path.join(hf_dir, "model.safetensors.index.json")
    if os.path.isfile(single):
        return _loaded(single, load_file)
    if os.path.isfile(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        weights = {}
        for shard in shards:
            weights.update(_loaded(os.path.join(hf_dir, shard), load_file))
        return weights
    others = [f for f in os.listdir(hf_dir) if f.endswith((".bin", ".h5", ".msgpack", ".ckpt"))]
    hint = (
        f" It holds {', '.join(sorted(others))}: load it once with transformers "
        "(`AutoModel.from_pretrained(dir)`) and pass the model to `from_torch`, or re-save it "
        "with `save_pretrained(dir, safe_serialization=True)`."
        if others
        else ""
    )
    raise DataError(f"{hf_dir} has no model.safetensors (or model.safetensors.index.json).{hint}")
