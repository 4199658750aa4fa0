"""XLA settings the engine needs before JAX compiles anything (applied on `import mtl`).

jaxlib 0.10's CPU backend computes some reductions with YNNPACK's dot kernels ("ynn reduce
fusions"), and one of them reads out of bounds: meta-training all-MiniLM-L6-v2 on binary
SentEval episodes (`configs/senteval_fewshot.py`, 2-way 8+8 shots, meta-batch 2) dies with a
segmentation fault in `ynn::dot_fp32_1x64x1_1x16x1_avx512` at its first step. Leaving the
reduce fusions out (`--xla_cpu_experimental_ynn_fusion_type=-reduce`) removes the crash and keeps
YNNPACK's matmuls. A user's own setting of that flag wins; other jaxlib versions (the flag may
not exist there, and XLA stops on unknown flags) are left alone.
"""

from __future__ import annotations

import os
from importlib import metadata

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
AFFECTED_JAXLIB = "0.10."


def avoid_known_crashes(environ: dict[str, str] | os._Environ = os.environ) -> None:
    """Adds `YNN_FLAG=-reduce` to `environ["XLA_FLAGS"]` under jaxlib 0.10 unless it is set."""
    try:
        version = metadata.version("jaxlib")
    except metadata.PackageNotFoundError:
        return
    flags = environ.get("XLA_FLAGS", "")
    if version.startswith(AFFECTED_JAXLIB) and YNN_FLAG not in flags:
        environ["XLA_FLAGS"] = f"{flags} {YNN_FLAG}=-reduce".strip()
