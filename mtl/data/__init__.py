"""Data sets: TFDS builders and loaders (omniglot, senteval, sinusoid)."""
