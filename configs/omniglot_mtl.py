"""Omniglot alphabets as a multi-task problem: one classification task per alphabet.

The eight alphabets of the two `background_small` zips; drawers 16-20 form the test set.

    python -m launch.train --config=configs/omniglot_mtl.py --workdir=/tmp/omniglot_mtl \
        --config.data.data_dir=../shared/data/omniglot

`--config=configs/omniglot_mtl.py:Greek,Latin` keeps only those alphabets (single-task
baselines use one). The data directory can also come from $MTL_OMNIGLOT_DIR.
"""

import ml_collections

from mtl import optim
from mtl.errors import unknown_name
from mtl.models import default_config as model_config
from mtl.weighting import default_config as weighting_config

# alphabet -> number of characters, in the background_small1 / background_small2 zips
ALPHABETS = {
    "Balinese": 24,
    "Early_Aramaic": 22,
    "Greek": 24,
    "Japanese_(katakana)": 47,
    "Korean": 40,
    "Latin": 26,
    "Sanskrit": 42,
    "Tagalog": 17,
}


def get_config(alphabets: str = "") -> ml_collections.ConfigDict:
    chosen = alphabets.split(",") if alphabets else sorted(ALPHABETS)
    for name in chosen:
        if name not in ALPHABETS:
            raise unknown_name("alphabet", name, ALPHABETS, field="--config=...:ALPHABETS")
    config = ml_collections.ConfigDict()
    config.trainer = "multitask"
    config.seed = 0
    config.num_steps = 3000
    config.batch_size = 128
    # "mixed": rows drawn from all alphabets, batch norm over the whole batch. "per_task": one
    # equal group of rows per alphabet, batch norm per group (LibMTL's multi_input); then the
    # per-task-gradient methods cost one backward pass (best with model.conv4.conv=matmul).
    config.batch_layout = "mixed"
    config.eval_batch_size = 512
    config.log_every = 100

    config.data = ml_collections.ConfigDict(
        dict(
            name="omniglot_alphabets",
            data_dir=ml_collections.FieldReference(None, field_type=str),
            tfds_dir=ml_collections.FieldReference(None, field_type=str),
            splits=("small1", "small2"),
            image_size=28,
            test_drawers=(16, 17, 18, 19, 20),
        )
    )
    config.model = model_config()
    config.model.trunk = "conv4"

    config.tasks = ml_collections.ConfigDict()
    for name in chosen:
        config.tasks[name] = dict(
            head="classification",
            num_outputs=ALPHABETS[name],
            loss="softmax_cross_entropy",
            metrics=("accuracy",),
            label=name,
        )

    config.weighting = weighting_config()
    config.optimizer = optim.default_config()
    config.optimizer.schedule = "cosine"
    config.checkpoint = ml_collections.ConfigDict(dict(every=500, keep=3))
    # Batches made ahead in threads (workers > 0: in worker processes), see mtl.data.prefetch.
    config.input = ml_collections.ConfigDict(dict(threads=2, prefetch=0, workers=0))
    # float32 | bfloat16: the trunk's compute dtype; parameters stay float32 (mtl.models.precision).
    config.precision = "float32"
    # Evaluators by name (mtl/runs/evaluators.py); `every` N > 0 also runs one every N steps.
    config.evals = ml_collections.ConfigDict(dict(test=dict(every=0)))
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1))
    # (regex over state paths, mesh axes): see mtl/sharding.py. conv4 fits on any device, so
    # nothing is split; e.g. (("trunk/.*kernel", "fsdp"),) with --config.mesh.fsdp=4.
    config.sharding = ml_collections.ConfigDict(dict(rules=()))
    return config
