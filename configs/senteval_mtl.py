"""Multi-task fine-tuning on all seven SentEval tasks: one converted trunk, one head per task.

    python -m launch.train --config=configs/senteval_mtl.py --workdir=/tmp/senteval_mtl \
        --config.init.checkpoint=/tmp/minilm --config.data.data_dir=../shared/data/senteval \
        --config.weighting.name=dwa

Batches mix the tasks in proportion to their training examples; `data.max_train_examples`
caps each task's share (equal caps give equal shares). The weighting methods of
`mtl.weighting` combine the per-task losses. A comma-separated argument picks other tasks.
"""

import ml_collections

from configs import senteval_finetune
from mtl.data.senteval_tfds import TASKS


def get_config(tasks: str = "") -> ml_collections.ConfigDict:
    config = senteval_finetune.get_config(tasks or ",".join(TASKS))
    config.num_steps = 2000
    config.data.max_train_examples = 2000
    config.optimizer.warmup_steps = 100
    return config
