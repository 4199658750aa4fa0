"""Multi-task learning on your own image folders: one task per tree `ROOT/<class>/<file>`.

    python -m launch.train --config=configs/image_folder_mtl.py:/data/birds,/data/flowers \
        --workdir=/tmp/own_mtl

Each folder in the argument is one task, named after the folder, with as many classes as it
has class folders (counted here; a tree with `train/` and `test/` folders uses them as the
splits, otherwise a seeded 20% of each class is the test set). Images of any size and mode are
converted to 64x64 RGB (`--config.data.image_size`, `--config.data.channels`) and decoded from
the files as batches need them. A labels file instead of one tree per task: see docs/data.md.

Any trunk, from scratch or from converted weights (docs/models.md):

    python -m launch.train --config=configs/image_folder_mtl.py:/data/birds,/data/flowers \
        --workdir=/tmp/birds_r50 --config.model.trunk=resnet --config.model.resnet.depth=50 \
        --config.init.checkpoint=/tmp/resnet50 --config.finetune.strategy=llrd
"""

import os

import ml_collections

from configs import omniglot_mtl
from mtl.data.image_folder import count_classes
from mtl.transfer import restore, strategies


def get_config(roots: str = "") -> ml_collections.ConfigDict:
    if not roots:
        raise SystemExit(
            "Name the image folders: --config=configs/image_folder_mtl.py:/data/a,/data/b"
        )
    trees = {os.path.basename(os.path.normpath(r)): r for r in roots.split(",")}
    config = omniglot_mtl.get_config(next(iter(omniglot_mtl.ALPHABETS)))  # the same training
    config.data = ml_collections.ConfigDict(
        dict(name="image_folder", roots=trees, image_size=64, channels=3, test_fraction=0.2)
    )
    config.tasks = ml_collections.ConfigDict(
        {
            name: dict(head="classification", num_outputs=count_classes(root), label=name)
            for name, root in trees.items()
        }
    )
    config.eval_batch_size = 256
    # A pretrained trunk to start from (`python -m launch.convert`), and how to fine-tune it.
    config.init = ml_collections.ConfigDict(
        dict(checkpoint="", keep_fresh=restore.KEEP_FRESH, skip=restore.SKIP)
    )
    config.finetune = strategies.default_config()
    return config
