"""Distil a fine-tuned SentEval run (the teacher, e.g. MiniLM) into a small BERT student.

    python -m launch.train --config=configs/senteval_finetune.py:sst2 --workdir=/tmp/ft_sst2 \
        --config.init.checkpoint=/tmp/minilm --config.data.data_dir=../shared/data/senteval
    python -m launch.train --config=configs/senteval_distill.py:sst2 --workdir=/tmp/student \
        --config.teacher.workdir=/tmp/ft_sst2 --config.data.data_dir=../shared/data/senteval

The student is a 2-layer, 256-wide BERT (`model.bert.*`) trained from scratch (no
`init.checkpoint`), tokenised with the teacher's tokenizer (`data.tokenizer_dir` unset: the
one the teacher's workdir keeps).
`--config.distill.alpha=0` trains the same student on the labels only (the baseline).
"""

import ml_collections

from configs import senteval_finetune
from mtl.runs.distillation import default_config as distill_config


def get_config(tasks: str = "sst2") -> ml_collections.ConfigDict:
    config = senteval_finetune.get_config(tasks)
    config.trainer = "distill"
    config.teacher = ml_collections.ConfigDict(
        dict(workdir=ml_collections.FieldReference(None, field_type=str))
    )
    config.model.bert.update(
        dict(num_layers=2, hidden_size=256, num_heads=4, intermediate_size=1024)
    )
    config.distill = distill_config()
    config.num_steps = 600
    config.optimizer.learning_rate = 5e-4
    return config
