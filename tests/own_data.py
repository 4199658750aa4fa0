"""Data sets the own-data tests write for themselves: image trees of mixed sizes, modes and
formats, and tables of sentences with missing labels."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

# (mode, extension) pairs cycled over the images of a class: every format and mode we accept.
KINDS = [("L", "png"), ("RGB", "jpg"), ("RGBA", "png"), ("1", "bmp"), ("P", "webp"),
         ("RGB", "jpeg"), ("I;16", "png"), ("LA", "png")]  # fmt: skip


def write_image(path: str, rng: np.random.Generator, mode: str, bright: float) -> None:
    """A random image of a random size whose mean brightness is `bright` (the class signal)."""
    h, w = (int(v) for v in rng.integers(12, 40, 2))
    pixels = np.clip(rng.normal(bright * 255, 30, (h, w, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    if mode == "I;16":
        image = Image.fromarray(np.asarray(image.convert("L"), np.uint16) * 257)
    elif mode != "RGB":
        image = image.convert(mode)
    image.save(path)


def write_tree(root: str, classes: dict[str, int], seed: int = 0) -> list[str]:
    """`root/<class>/<i>.<ext>` with `classes[name]` images each; a class's brightness is
    its index over the classes, so a model can tell them apart."""
    rng = np.random.default_rng(seed)
    written = []
    for c, (name, count) in enumerate(classes.items()):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i in range(count):
            mode, ext = KINDS[i % len(KINDS)]
            path = os.path.join(root, name, f"{i:04d}.{ext}")
            write_image(path, rng, mode, (c + 0.5) / len(classes))
            written.append(path)
    return written


def write_table(path: str, header: list[str], rows: list[list[str]]) -> str:
    """A CSV / TSV / JSONL file (by extension) of `rows`; "" cells are left empty (JSONL:
    the key is left out)."""
    import csv
    import json

    ext = os.path.splitext(path)[1]
    with open(path, "w", newline="", encoding="utf-8") as f:
        if ext == ".jsonl":
            for row in rows:
                f.write(json.dumps({k: v for k, v in zip(header, row, strict=True) if v}) + "\n")
        else:
            writer = csv.writer(f, delimiter="\t" if ext == ".tsv" else ",")
            writer.writerow(header)
            writer.writerows(rows)
    return path
