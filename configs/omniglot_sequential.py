"""Two Omniglot alphabets learned one after the other, with or without EWC.

    python -m launch.train --config=configs/omniglot_sequential.py --workdir=/tmp/seq \
        --config.data.data_dir=../shared/data/omniglot --config.sequential.ewc_strength=100

`--config=configs/omniglot_sequential.py:Greek,Latin` picks the alphabets, in order (one per
phase). An MLP trunk: EWC protects parameters, not batch-norm statistics.
"""

from configs import omniglot_mtl
from mtl.runs.sequential import default_config as sequential_config

DEFAULT = "Japanese_(katakana),Sanskrit"


def get_config(alphabets: str = DEFAULT):
    config = omniglot_mtl.get_config(alphabets)
    config.trainer = "sequential"
    config.num_steps = 1500
    config.batch_size = 64
    config.optimizer.schedule = "constant"
    config.model.trunk = "mlp"
    config.model.mlp.hidden = (256, 256)
    config.sequential = sequential_config()
    config.sequential.phases = tuple(alphabets.split(","))
    return config
