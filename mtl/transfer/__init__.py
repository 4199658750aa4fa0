"""Transfer learning, one small pure module per idea; the runs that use them live in `mtl/runs/`.

Fine-tuning: strategies (`strategies`, built on path-regex parameter groups in `partition`), LoRA
(`lora`), partial restore into new models (`restore`), linear probes on cached features (`probe`).
Across tasks: task affinity, distillation, EWC, domain-adversarial training, progressive networks.
"""
