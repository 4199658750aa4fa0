"""The `image_folder` input pipeline: images/s against what the train step consumes, and peak
memory against the size of the data set, in one process run.

    .venv/bin/python -m benchmarks.input_pipeline --root=/tmp/pipeline --images=100000

1. Writes a folder of `--images` PNGs, 28x28 to 105x105 grayscale (Omniglot-like) in 100
   classes, once (reused when present), and a 224x224 RGB JPEG folder of `--large_images`.
2. Throughput, for each case (conv4 on 28x28x1; conv4 on 224x224x3):
   - ours: batches of `--batch` decoded by `mtl.data.prefetch` from the folder, with N Grain
     threads, and with N Grain worker processes (`config.input.workers`), for N in
     `--threads`;
   - peer: PyTorch's `DataLoader` with N worker processes decoding the same files with the
     same PIL conversion;
   - the train step: the engine's jitted multi-task step on in-memory batches (what the
     pipeline must keep fed), in images/s. The ratio pipeline / step > 1 means the step, not
     the input, sets the pace.
3. Memory: a 30-step training run (a subprocess each) on the first 10% of the images and on
   all of them; peak resident memory of each and the ratio (it must stay near 1: images are
   never held, only their paths).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
from absl import flags

from mtl import entry

_ROOT = flags.DEFINE_string("root", "/tmp/input_pipeline", "Where the generated folders go.")
_IMAGES = flags.DEFINE_integer("images", 100_000, "Images in the generated 28x28 folder.")
_LARGE = flags.DEFINE_integer("large_images", 5_000, "Images in the 224x224 folder.")
_BATCH = flags.DEFINE_integer("batch", 128, "Images per batch.")
_BATCHES = flags.DEFINE_integer("batches", 40, "Batches timed per measurement.")
_THREADS = flags.DEFINE_list("threads", ["1", "2", "4"], "Decoding threads / workers to time.")
_MEMORY = flags.DEFINE_bool("memory", True, "Measure peak memory on 10% and 100% of the images.")
_CHILD = flags.DEFINE_string("child_run", "", "Internal: train on this folder, print peak RSS.")
_README = flags.DEFINE_string("readme", "", "Page to write the tables into (between markers).")
BEGIN, END = "<!-- input-pipeline:begin -->", "<!-- input-pipeline:end -->"

CLASSES = 100


def write_folder(root: str, count: int, large: bool) -> str:
    """`count` images in `CLASSES` class folders (kept when already complete)."""
    from PIL import Image

    done = os.path.join(root, ".complete")
    if os.path.exists(done):
        return root
    rng = np.random.default_rng(0)
    for i in range(count):
        folder = os.path.join(root, f"class{i % CLASSES:03d}")
        os.makedirs(folder, exist_ok=True)
        if large:
            base = np.linspace(0, 255, 224, dtype=np.float32)[None, :, None]
            pixels = np.clip(base + rng.normal(0, 20, (224, 224, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(os.path.join(folder, f"{i:06d}.jpg"), quality=90)
        else:
            size = int(rng.integers(28, 106))
            pixels = (rng.random((size, size)) < 0.1).astype(np.uint8) * 255  # sparse strokes
            Image.fromarray(pixels).save(os.path.join(folder, f"{i:06d}.png"))
    open(done, "w").close()
    return root


def subset(root: str, fraction: float) -> str:
    """A folder of hard links to the first `fraction` of each class's files."""
    out = f"{root}_{int(100 * fraction)}pct"
    if os.path.exists(os.path.join(out, ".complete")):
        return out
    for name in sorted(os.listdir(root)):
        if name.startswith("."):
            continue
        files = sorted(os.listdir(os.path.join(root, name)))
        os.makedirs(os.path.join(out, name), exist_ok=True)
        for f in files[: max(1, int(len(files) * fraction))]:
            target = os.path.join(out, name, f)
            if not os.path.exists(target):
                os.link(os.path.join(root, name, f), target)
    open(os.path.join(out, ".complete"), "w").close()
    return out


def ours(root: str, size: int, channels: int, threads: int, workers: int = 0) -> float:
    """Images/s of the engine's pipeline: sampled batches decoded by prefetch threads (in
    `workers` processes when > 0)."""
    from mtl.data import batches, prefetch, sources

    data = sources.load(dict(name="image_folder", root=root, image_size=size, channels=channels,
                             test_fraction=0.0, check_images=False)).train  # fmt: skip
    source = batches.ArrayBatches(data, batches.mixed_sampler(0, data, _BATCH.value), _BATCH.value)
    stream = prefetch.prefetched(
        source, 0, _BATCHES.value + 2, slice(None), threads=threads, workers=workers
    )
    next(stream), next(stream)  # threads or workers started, buffer primed as in a run
    start = time.perf_counter()
    for _ in range(_BATCHES.value):
        next(stream)
    rate = _BATCH.value * _BATCHES.value / (time.perf_counter() - start)
    stream.close()
    return rate


def peer(root: str, size: int, channels: int, workers: int) -> float:
    """Images/s of PyTorch's DataLoader over the same files with the same conversion."""
    import torch.utils.data

    from mtl.data import image_folder, images

    paths = image_folder.scan_classes(root).paths
    spec = images.ImageSpec(size, channels)

    class Files(torch.utils.data.Dataset):
        def __len__(self):
            return len(paths)

        def __getitem__(self, i):
            return torch.from_numpy(images.read_image(paths[i], spec))

    sampler = torch.utils.data.RandomSampler(
        Files(),
        replacement=True,  # as many batches as timed, from any folder size
        num_samples=_BATCH.value * (_BATCHES.value + 2),
        generator=torch.Generator().manual_seed(0),
    )
    loader = torch.utils.data.DataLoader(Files(), batch_size=_BATCH.value, sampler=sampler,
                                         num_workers=workers, prefetch_factor=2)  # fmt: skip
    it = iter(loader)
    next(it), next(it)
    start = time.perf_counter()
    for _ in range(_BATCHES.value):
        next(it)
    return _BATCH.value * _BATCHES.value / (time.perf_counter() - start)


def run_config(size: int, channels: int, num_steps: int):
    """A one-task conv4 run over a folder of `CLASSES` classes."""
    import ml_collections

    from mtl import optim
    from mtl.models import default_config as model_config
    from mtl.weighting import default_config as weighting_config

    config = ml_collections.ConfigDict()
    config.update(trainer="supervised", seed=0, num_steps=num_steps, batch_size=_BATCH.value)
    config.update(eval_batch_size=256, log_every=10)
    config.data = dict(name="image_folder", image_size=size, channels=channels, test_fraction=0.01)
    config.model = model_config()
    config.model.trunk = "conv4"
    config.tasks = {"label": dict(head="classification", num_outputs=CLASSES)}
    config.weighting = weighting_config()
    config.optimizer = optim.default_config()
    config.checkpoint = ml_collections.ConfigDict(dict(every=1000, keep=1))
    return config


def train_step_rate(size: int, channels: int) -> float:
    """Images/s the jitted conv4 train step consumes (the batch already in memory)."""
    import jax

    from mtl.data.sources import MultiTaskData
    from mtl.runs import supervised
    from mtl.train.loop import compile_experiment

    rng = np.random.default_rng(0)
    x = rng.random((_BATCH.value, size, size, channels), np.float32)
    y = rng.integers(0, CLASSES, _BATCH.value).astype(np.int32)
    data = {"inputs": x, "labels": {"label": y}, "masks": {"label": np.ones(len(y), bool)}}
    parts = supervised.parts(run_config(size, channels, 1), MultiTaskData(data, data))
    experiment = supervised.experiment(parts)
    compiled = compile_experiment(experiment)
    state, batch = compiled.init(), experiment.batches(0, slice(None))
    state, metrics = compiled.train_step(state, batch)  # compiles
    jax.block_until_ready(metrics)
    steps = 10
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = compiled.train_step(state, batch)
    jax.block_until_ready(metrics)
    return _BATCH.value * steps / (time.perf_counter() - start)


def child_run(root: str) -> None:
    """Trains 30 steps on `root` in this process; prints its peak resident memory (MiB)."""
    import tempfile

    from mtl.runs import supervised

    config = run_config(28, 1, 30)
    config.data.root = root
    with tempfile.TemporaryDirectory() as workdir:
        supervised.train(config, workdir)
    print(json.dumps({"peak_rss_mib": peak_rss_mib()}))


def peak_rss_mib() -> float:
    """This process's peak resident memory since it started its program (VmHWM; unlike
    `ru_maxrss`, it does not carry over the memory of the parent it was forked from)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_memory(root: str) -> float:
    """Peak resident memory (MiB) of a 30-step run on `root`, in a fresh process."""
    command = [sys.executable, "-m", "benchmarks.input_pipeline", f"--child_run={root}"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"The run on {root} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_rss_mib"]


def main(argv):
    del argv
    if _CHILD.value:
        return child_run(_CHILD.value)
    small = write_folder(os.path.join(_ROOT.value, f"small_{_IMAGES.value}"), _IMAGES.value, False)
    large = write_folder(os.path.join(_ROOT.value, f"large_{_LARGE.value}"), _LARGE.value, True)
    lines = [
        f"batch {_BATCH.value}, {_BATCHES.value} batches timed; images/s",
        "| case | N | ours, N threads | ours, N worker processes | PyTorch DataLoader, N "
        "workers | best ours / peer | train step | best ours / step |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, root, size, channels in (
        (f"conv4 28x28x1, {_IMAGES.value} PNGs", small, 28, 1),
        (f"conv4 224x224x3, {_LARGE.value} JPEGs", large, 224, 3),
    ):
        step = train_step_rate(size, channels)
        for threads in map(int, _THREADS.value):
            a = ours(root, size, channels, threads)
            w = ours(root, size, channels, 1, workers=threads)
            b = peer(root, size, channels, threads)
            best = max(a, w)
            lines.append(
                f"| {name} | {threads} | {a:.0f} | {w:.0f} | {b:.0f} | {best / b:.2f} "
                f"| {step:.0f} | {best / step:.2f} |"
            )
        print("\n".join(lines), flush=True)
    if _MEMORY.value:
        part = subset(small, 0.1)
        low, high = peak_memory(part), peak_memory(small)
        lines += [
            "",
            "| run (30 steps, conv4 28x28) | peak resident memory (MiB) |",
            "| --- | --- |",
            f"| 10% of the images ({_IMAGES.value // 10}) | {low:.0f} |",
            f"| all {_IMAGES.value} images | {high:.0f} |",
            f"| ratio all / 10% | {high / low:.2f} |",
        ]
    print("\n".join(lines))
    if _README.value:
        from scripts.readme import write_between

        command = " ".join(["python -m benchmarks.input_pipeline", *sys.argv[1:]])
        made = f"Made by `{command}` ({time.strftime('%Y-%m-%d')}) on {os.cpu_count()} CPU cores:"
        write_between(_README.value, BEGIN, END, "\n".join([made, "", *lines]))


if __name__ == "__main__":
    entry.run(main)
