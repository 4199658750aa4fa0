"""Multi-task architectures beside hard parameter sharing, as compositions over any trunk.

`model.architecture` picks one; its options are `model.architectures.<name>`:

| name | shared part (`params["trunk"]`) | each task's part (`params["heads"][task]`) |
| --- | --- | --- |
| `hps` | one trunk | a dense head (the default: hard parameter sharing) |
| `mmoe` | `num_experts` trunks | a softmax gate over the experts, a dense tower |
| `dselect_k` | `num_experts` trunks | DSelect-k's `k` differentiable binary selectors, a tower |
| `cgc` | `num_experts` trunks | `task_experts` trunks of its own, a gate over all, a tower |
| `cross_stitch` | a trunk per task, cross-stitch units between stages | a tower on its column |
| `mtan` | one trunk, every stage's features | an attention mask per stage, a tower |

Each file registers a builder `(make_trunk, tasks, input_shape, *, options..., rngs) ->
(shared module, {task: head})`; `make_trunk()` returns a freshly initialised trunk, so experts
and columns start from different weights. Heads are called `head(z, inputs=batch_inputs,
train=...)`: gates may read the raw inputs, and CGC's task experts run on them. The split
matters to the gradient methods: they take per-task gradients of the shared part only, as
LibMTL's architectures do (`get_share_params`).
"""

import importlib

from mtl.registry import Registry

ARCHITECTURES: Registry = Registry("architecture")
HARD_SHARING = "hps"

for _module in ("mixture", "cgc", "cross_stitch", "mtan"):
    importlib.import_module(f"{__name__}.{_module}")
