"""ANIL on Omniglot (Raghu et al. 2020): MAML where only the head adapts.

    python -m launch.train --config=configs/omniglot_anil.py --workdir=/tmp/omniglot_anil \\
        --config.data.data_dir=../shared/data/omniglot

The trunk's features of an episode are computed once and the inner loop runs on the head
alone, so a meta-step costs about one forward and backward pass of the trunk. Same data,
network and outer loop as configs/omniglot_maml.py; more inner steps, as the head is cheap.
"""

from configs import omniglot_maml


def get_config(variants: str = ""):
    config = omniglot_maml.get_config(variants)
    config.meta.adapt = "head"
    config.meta.inner_steps = 5
    return config
