"""Rotation prediction (Gidaris et al., "Unsupervised Representation Learning by Predicting
Image Rotations", ICLR 2018) as one more task of a multi-task run.

`add_rotation_task` labels every image with rotation 0 in a new label field and appends one
copy of each image rotated by k * 90 degrees, k drawn from {1, 2, 3}, labelled for the
rotation task only (its other masks are off, so the supervised tasks never see the rotated
copies). `rotate_every_image` instead rotates every image itself by a seeded k * 90 degrees, k in
{0, 1, 2, 3}, and keeps its other labels: rotation is then a task on the same inputs as the
others (a single-input multi-task problem; `configs/omniglot_single_input.py`).

The task is a 4-way classification head reading that field:

    config.tasks.rotation = dict(head="classification", num_outputs=4, label="rotation")
"""

from __future__ import annotations

import numpy as np

from mtl.data.arrays import ArrayDataset
from mtl.errors import DataError

FIELD = "rotation"


def rotate(images: np.ndarray, k: np.ndarray) -> np.ndarray:
    """`images` [N, H, W, C] each rotated counter-clockwise by `k[n] * 90` degrees."""
    out = np.empty_like(images)
    for quarter in range(4):
        sel = k == quarter
        out[sel] = np.rot90(images[sel], quarter, axes=(1, 2))
    return out


def _square_images(data: ArrayDataset, field: str) -> np.ndarray:
    images = np.asarray(data["inputs"])
    if images.ndim != 4 or images.shape[1] != images.shape[2]:
        raise DataError(
            f"Rotation prediction needs square images [N, S, S, C], got shape {images.shape}."
        )
    if field in data["labels"]:
        raise DataError(f"The data set already has a label field {field!r}.")
    return images


def rotate_every_image(data: ArrayDataset, seed: int = 0, field: str = FIELD) -> ArrayDataset:
    """Every image rotated by `k * 90` degrees, k drawn uniformly from {0, 1, 2, 3} with
    `seed`, labelled k in `field` (for every row); the other labels and masks unchanged."""
    images = _square_images(data, field)
    k = np.random.default_rng(seed).integers(0, 4, len(images)).astype(np.int32)
    return {
        "inputs": rotate(images, k),
        "labels": {**data["labels"], field: k},
        "masks": {**data["masks"], field: np.ones(len(images), bool)},
    }


def add_rotation_task(data: ArrayDataset, seed: int = 0, field: str = FIELD) -> ArrayDataset:
    """The dataset plus rotated copies and the `field` labels (0 for the originals)."""
    images = _square_images(data, field)
    n = len(images)
    k = np.random.default_rng(seed).integers(1, 4, n).astype(np.int32)
    labels = {f: np.concatenate([y, np.zeros_like(y)]) for f, y in data["labels"].items()}
    masks = {f: np.concatenate([m, np.zeros_like(m)]) for f, m in data["masks"].items()}
    labels[field] = np.concatenate([np.zeros(n, np.int32), k])
    masks[field] = np.ones(2 * n, bool)
    return {
        "inputs": np.concatenate([images, rotate(images, k)]),
        "labels": labels,
        "masks": masks,
    }
