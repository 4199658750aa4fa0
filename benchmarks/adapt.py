"""Few-shot adaptation speed: adapt to one 2-way 8-shot text episode, then predict 1,000 query
sentences, per method, ours against the same procedure in PyTorch + transformers, one process.

    python -m benchmarks.adapt                         # every method, MiniLM, 20 steps
    python -m benchmarks.adapt --methods=probe,finetune --rounds=5 --queries=1000

Both sides start from all-MiniLM-L6-v2 (ours converted with `mtl.convert`), tokenise inside
the timed call (the same tokenizer, at most 64 tokens), mean-pool the last hidden states and
run the same procedure with the same optimizer and steps. Neither pads to 64: PyTorch pads
each batch to its longest sentence (`padding=True`); ours cuts each batch to its longest
sentence rounded up to 16 tokens (one compilation per width) and predicts in length-sorted
chunks of 256 sentences.

- `probe`: support features once, `--steps` Adam steps on a linear head (the logistic-
  regression probe), then the query features and logits;
- `prototype`: support and query features, logits = minus squared distances to the class
  means (nearest prototype, nothing trained);
- `baseline_pp`: the probe with a cosine classifier (scale 10) started from the class means;
- `finetune`: `--steps` Adam steps on the whole encoder and a linear head, then the queries;
- `setfit`: `--setfit_steps` Adam steps of the contrastive pair loss on the whole encoder,
  then the probe.

Ours is `mtl.runs.meta.pretrained_learner(config).adapt(...).predict(...)` (the learner API a
user calls; its compiled functions are cached after the warm-up call); PyTorch runs eagerly
with all CPU threads, queries under `torch.no_grad`. Timings alternate between the sides in
`--rounds` rounds after one warm-up call each, and the medians are compared.
"""

from __future__ import annotations

import os
import statistics
import time

from absl import flags

from mtl import allocator, entry

_METHODS = flags.DEFINE_list(
    "methods", ["probe", "prototype", "baseline_pp", "finetune", "setfit"], "Methods to time."
)
_SHOTS = flags.DEFINE_integer("shots", 8, "Support sentences per class (2 classes).")
_QUERIES = flags.DEFINE_integer("queries", 1000, "Query sentences to predict.")
_STEPS = flags.DEFINE_integer("steps", 20, "Adam steps of the head / fine-tuning.")
_SETFIT_STEPS = flags.DEFINE_integer("setfit_steps", 20, "SetFit's contrastive steps.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Timed rounds (each side once per round).")
_THREADS = flags.DEFINE_integer("torch_threads", 0, "PyTorch threads (0: all CPU cores).")
for _holder in (_METHODS, _SHOTS, _QUERIES, _STEPS, _SETFIT_STEPS, _ROUNDS, _THREADS):
    flags.FLAGS[_holder.name].allow_override = True

MAX_LENGTH = 64
PROBE_LR, FINETUNE_LR, SETFIT_LR = 1e-2, 1e-4, 1e-4
OURS = {
    "probe": dict(method="finetune", finetune_lr=PROBE_LR),
    "prototype": dict(method="protonets"),
    "baseline_pp": dict(method="finetune", finetune_head="cosine", finetune_lr=PROBE_LR),
    "finetune": dict(method="finetune", finetune_adapt="all", finetune_lr=FINETUNE_LR),
    "setfit": dict(method="setfit", setfit_lr=SETFIT_LR, finetune_lr=PROBE_LR),
}


def episode(shots: int, queries: int, seed: int = 0):
    """Sentences of two made-up classes (support and queries) and the support labels."""
    import numpy as np

    rng = np.random.default_rng(seed)
    words = {0: "good great fine lovely warm bright", 1: "bad awful dull cold grim poor"}

    def sentence(c):
        picked = rng.choice(words[c].split(), size=rng.integers(4, 12))
        return "the film was " + " ".join(picked)

    labels = [c for c in (0, 1) for _ in range(shots)]
    return [sentence(c) for c in labels], labels, [sentence(i % 2) for i in range(queries)]


def ours(checkpoint: str, method: str, support, labels, queries, steps: int, setfit_steps: int):
    from configs import senteval_fewshot
    from mtl.runs.meta import pretrained_learner
    from mtl.transfer import restore

    config = senteval_fewshot.get_config()
    config.init.checkpoint = checkpoint
    restore.take_architecture(config.model, checkpoint)
    config.model.bert.update(dropout=0.0, attention_dropout=0.0)
    config.data = dict(name="text_table", tokenizer_dir=checkpoint, max_length=MAX_LENGTH)
    config.meta.update(OURS[method], setfit_steps=setfit_steps)
    if method != "prototype":
        config.num_steps = 0
    learner = pretrained_learner(config)

    def run():
        return learner.adapt(support, labels, steps=steps).predict(queries)

    return run


def peer(hf_dir: str, method: str, support, labels, queries, steps: int, setfit_steps: int):
    """The same procedure written with PyTorch and transformers."""
    import torch
    from transformers import AutoTokenizer, BertModel

    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    base = BertModel.from_pretrained(hf_dir, add_pooling_layer=False)
    state = {k: v.clone() for k, v in base.state_dict().items()}
    y = torch.tensor(labels)

    def encode(model, sentences):
        # padding=True: each batch padded to its longest sentence, the transformers idiom.
        batch = tokenizer(sentences, max_length=MAX_LENGTH, truncation=True,
                          padding=True, return_tensors="pt")  # fmt: skip
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def fit_head(features, cosine: bool):
        if cosine:
            means = torch.stack([features[y == c].mean(0) for c in (0, 1)], 1)
            weights = [torch.nn.Parameter(means.clone())]
            logits = lambda z: (
                10.0
                * torch.nn.functional.normalize(z, dim=-1)
                @ (torch.nn.functional.normalize(weights[0], dim=0))
            )
        else:
            weights = [torch.nn.Parameter(torch.zeros(features.shape[1], 2)),
                       torch.nn.Parameter(torch.zeros(2))]  # fmt: skip
            logits = lambda z: z @ weights[0] + weights[1]
        optimizer = torch.optim.AdamW(weights, lr=PROBE_LR, weight_decay=0.0)
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(logits(features), y).backward()
            optimizer.step()
        return logits

    def predict(model, logits):
        with torch.no_grad():
            return logits(encode(model, queries)).argmax(-1)

    def run():
        model = base
        model.load_state_dict(state)  # every call starts from the pretrained weights
        model.eval()  # dropout off, as ours in meta-learning
        if method == "prototype":
            with torch.no_grad():
                z = encode(model, support)
                means = torch.stack([z[y == c].mean(0) for c in (0, 1)])
                return (-(torch.cdist(encode(model, queries), means) ** 2)).argmax(-1)
        if method == "setfit":
            optimizer = torch.optim.Adam(model.parameters(), lr=SETFIT_LR)
            upper = torch.triu(torch.ones(len(labels), len(labels)), diagonal=1)
            same = (y[:, None] == y[None, :]).float()
            for _ in range(setfit_steps):
                optimizer.zero_grad(set_to_none=True)
                z = torch.nn.functional.normalize(encode(model, support), dim=-1)
                loss = (upper * (z @ z.T - same) ** 2).sum() / upper.sum()
                loss.backward()
                optimizer.step()
        if method == "finetune":
            head = torch.nn.Linear(model.config.hidden_size, 2)
            torch.nn.init.zeros_(head.weight), torch.nn.init.zeros_(head.bias)
            params = [*model.parameters(), *head.parameters()]
            optimizer = torch.optim.AdamW(params, lr=FINETUNE_LR, weight_decay=0.0)
            for _ in range(steps):
                optimizer.zero_grad(set_to_none=True)
                torch.nn.functional.cross_entropy(head(encode(model, support)), y).backward()
                optimizer.step()
            return predict(model, head)
        with torch.no_grad():
            features = encode(model, support)
        return predict(model, fit_head(features, cosine=method == "baseline_pp"))

    return run


def main(argv):
    del argv
    import tempfile

    import jax
    import torch
    import transformers

    from mtl.convert import package_dir, write_checkpoint

    torch.set_num_threads(_THREADS.value or os.cpu_count())
    hf_dir = package_dir()
    checkpoint = os.path.join(tempfile.mkdtemp(), "minilm")
    write_checkpoint(hf_dir, checkpoint)
    support, labels, queries = episode(_SHOTS.value, _QUERIES.value)
    print(
        f"Adapt to a 2-way {_SHOTS.value}-shot episode and predict {_QUERIES.value} queries, "
        f"all-MiniLM-L6-v2, {MAX_LENGTH} tokens, {_STEPS.value} steps (SetFit "
        f"{_SETFIT_STEPS.value} + {_STEPS.value}); {os.cpu_count()} CPU cores; jax "
        f"{jax.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"transformers {transformers.__version__}; median of {_ROUNDS.value} rounds; malloc: "
        f"{allocator.current_allocator()}."
    )
    print("  method        ours (s)  PyTorch (s)  PyTorch / ours  ours first call (s)")
    for method in _METHODS.value:
        steps = (_STEPS.value, _SETFIT_STEPS.value)
        sides = {"ours": ours(checkpoint, method, support, labels, queries, *steps),
                 "PyTorch": peer(hf_dir, method, support, labels, queries, *steps)}  # fmt: skip
        start = time.perf_counter()
        sides["ours"]()  # compiles
        first = time.perf_counter() - start
        sides["PyTorch"]()
        times = {name: [] for name in sides}
        for _ in range(_ROUNDS.value):
            for name, run in sides.items():
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
        ours_s, peer_s = (statistics.median(times[n]) for n in ("ours", "PyTorch"))
        print(f"  {method:<12s} {ours_s:9.3f} {peer_s:12.3f} {peer_s / ours_s:15.2f} "
              f"{first:20.1f}")  # fmt: skip


if __name__ == "__main__":
    entry.run(main)
