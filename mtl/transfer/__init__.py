"""Transfer learning: task affinity, distillation, EWC, domain-adversarial training, progressive
networks. Each module is small and pure; the loops that use them live in `mtl/train/`."""
