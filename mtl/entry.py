"""What every entry point does around its `main`: `mtl.entry.run(main)` instead of `app.run`.

    if __name__ == "__main__":
        entry.run(main)

Before absl parses the flags it sets `TF_CPP_MIN_LOG_LEVEL=2` (unless set: TensorFlow's and
XLA's C++ INFO and WARNING lines stay out of the log). Once the flags are parsed, and before
`main` does any JAX work, it restarts the process under TCMalloc (`mtl.allocator.use_tcmalloc`:
`MTL_MALLOC=system` opts out, a bad setting is one line and exit code 2), then keeps library
INFO lines out of the log (`mtl.logs.quiet_library_logs`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, NoReturn

from absl import app

from mtl import allocator


def run(
    main: Callable[[list[str]], object],
    flags_parser: Callable[[list[str]], Any] | None = None,
    *,
    tcmalloc: bool = True,
) -> NoReturn:
    """`absl.app.run(main, flags_parser)` with the preamble; `tcmalloc=False` skips the restart."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    def wrapped(argv: list[str]) -> object:
        if tcmalloc:
            allocator.use_tcmalloc()  # replaces the process: the flags are parsed again after it
        from mtl.logs import quiet_library_logs  # imports JAX: after the restart

        quiet_library_logs()
        return main(argv)

    app.run(wrapped, flags_parser=flags_parser or app.parse_flags_with_usage)
