"""Domain-adversarial training on Omniglot: a source task on the images, adapted to a
transformed copy of them (the target domain, unlabelled in training).

    python -m launch.train --config=configs/omniglot_dann.py:alphabet,negative \
        --workdir=/tmp/dann --config.data.data_dir=../shared/data/omniglot

The config argument is `task,domain`. The task is "alphabet" (which of the 8 alphabets, the
data source's `pooled_tasks`), "character" (which of all 242 characters) or one alphabet's
name (its characters). Domains ("negative", "noisy", "shifted") are
`mtl.data.omniglot_domains.DOMAINS`, added by the data source's `target_domain` option under
the label field `<task>_<domain>`. `--config.dann.scale=0` is the source-only baseline (same
model, same batches, no adversarial gradient into the trunk).
"""

from configs import omniglot_mtl, omniglot_pooled
from mtl.runs.domain_adversarial import default_config as dann_config

DEFAULT = "alphabet,negative"


def get_config(pair: str = DEFAULT):
    task, domain = (pair.split(",") + ["negative"])[:2]
    if task in omniglot_pooled.CLASSES:
        config = omniglot_pooled.get_config(task)
    else:
        config = omniglot_mtl.get_config(task)
    config.trainer = "dann"
    config.num_steps = 1500
    config.batch_size = 64
    config.optimizer.schedule = "constant"
    config.model.conv4.filters = 32
    config.data.target_domain = domain
    config.dann = dann_config()
    config.dann.update(source=task, target=f"{task}_{domain}")
    return config
