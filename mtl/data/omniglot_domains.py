"""A second image domain for domain adaptation: every image again, transformed, labelled under
new label fields (`trainer="dann"` reads one as its target).

`add_target_domain(data, "negative")` appends `1 - x` of every image; each label field `f`
gets a twin `f_negative` that labels the copies only (the copies carry no `f` label, the
originals no `f_negative` one). So `config.dann.source="Greek"` and
`config.dann.target="Greek_negative"` adapt a Greek classifier to negative images. Images are
in [0, 1] (strokes 1), as `mtl.data.omniglot` gives them.
"""

from __future__ import annotations

import numpy as np

from mtl.data.arrays import ArrayDataset
from mtl.errors import ConfigError, DataError

# domain -> what it does to an image, as the tables say it
DOMAINS = {
    "negative": "negatives (1 - x)",
    "noisy": "low contrast with noise (0.3 + 0.4 x + N(0, 0.2))",
    "shifted": "shifted 4 pixels right and down (wrapping around)",
}


def transform(images: np.ndarray, domain: str, seed: int = 0) -> np.ndarray:
    """`images` [N, H, W, C] in the target `domain` (`seed` draws the noise of "noisy")."""
    if domain == "negative":
        return 1.0 - images
    if domain == "noisy":
        noise = np.random.default_rng(seed).normal(0.0, 0.2, images.shape)
        return (0.3 + 0.4 * images + noise).astype(images.dtype)
    if domain == "shifted":
        return np.roll(images, (4, 4), axis=(1, 2))
    raise ConfigError(
        f"Unknown target domain {domain!r} (config data.target_domain); known: "
        f"{', '.join(DOMAINS)}."
    )


def add_target_domain(data: ArrayDataset, domain: str, seed: int = 0) -> ArrayDataset:
    """The data set plus a transformed copy of every image, labelled under `<field>_<domain>`."""
    images = np.asarray(data["inputs"])
    if images.ndim != 4:
        raise DataError(f"A target domain needs images [N, H, W, C], got shape {images.shape}.")
    clash = sorted(f"{f}_{domain}" for f in data["labels"] if f"{f}_{domain}" in data["labels"])
    if clash:
        raise DataError(f"The data set already has label field(s) {', '.join(clash)}.")
    copies = transform(images, domain, seed)
    labels, masks = {}, {}
    for field, y in data["labels"].items():
        m = np.asarray(data["masks"][field], bool)
        off = np.zeros_like(m)
        labels[field] = labels[f"{field}_{domain}"] = np.concatenate([y, y])
        masks[field] = np.concatenate([m, off])
        masks[f"{field}_{domain}"] = np.concatenate([off, m])
    return {"inputs": np.concatenate([images, copies]), "labels": labels, "masks": masks}
