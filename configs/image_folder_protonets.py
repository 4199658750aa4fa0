"""Prototypical networks on N-way K-shot episodes from your own image folder.

    python -m launch.train --config=configs/image_folder_protonets.py:/data/classes \
        --workdir=/tmp/own_protonets --config.meta.ways=5 --config.meta.shots=5

The folder is `ROOT/<class>/<file>` (or `ROOT/train|val|test/<class>/<file>`, whose folders are
then the meta-splits); otherwise its classes are split into meta-train / val / test by a seeded
permutation (`--config.data.split_fractions`). Every class needs shots + queries images.
Images become 84x84 RGB (mini-ImageNet's size: `--config.data.image_size`).
"""

import ml_collections

from configs import omniglot_protonets


def get_config(root: str = ""):
    if not root:
        raise SystemExit("Name the folder: --config=configs/image_folder_protonets.py:/data/x")
    config = omniglot_protonets.get_config()
    config.data = ml_collections.ConfigDict(
        dict(name="image_folder", root=root, image_size=84, channels=3, class_depth=1)
    )
    config.meta.update(ways=5, shots=1, queries=10, meta_batch=8)
    config.eval.update(queries=10)
    return config
