"""Omniglot alphabets learned one after the other by a progressive network, one column each.

    python -m launch.train --config=configs/omniglot_progressive.py --workdir=/tmp/pnn \
        --config.data.data_dir=../shared/data/omniglot

`--config=configs/omniglot_progressive.py:Greek,Latin` picks the alphabets, in order (one per
phase and column). Columns are MLPs of widths `progressive.hidden` on the flattened images,
with lateral connections from every earlier column (see `mtl/runs/progressive_networks.py`).
"""

from configs import omniglot_mtl
from mtl.runs.progressive_networks import default_config as progressive_config

DEFAULT = "Japanese_(katakana),Sanskrit"


def get_config(alphabets: str = DEFAULT):
    config = omniglot_mtl.get_config(alphabets)
    config.trainer = "progressive"
    config.num_steps = 1500
    config.batch_size = 64
    config.optimizer.schedule = "constant"
    # The columns are the model: the trunk and weighting blocks of the base config are unused.
    del config.model, config.weighting, config.sharding
    config.progressive = progressive_config()
    config.progressive.phases = tuple(alphabets.split(","))
    return config
