"""Training batches made ahead of the step that needs them, in background threads (Grain).

    for batch in prefetched(source, start=1200, stop=5000, rows=slice(0, 32), threads=4):
        ...

A batch is a pure function of its step (`BatchSource`), so Grain can build several at once, in
any order, and hand them over in step order: the batches are the same with 0 or 16 threads, and
the iterator's whole state is the next step, which the checkpoint already holds (a resumed run
starts the stream at the restored step). Image sources decode their files here: PIL releases
the GIL while decoding, so threads decode in parallel. `threads=0` makes each batch in the loop's
own thread, when it is needed.

Small images decode faster than Python can hand them over, and then threads contend for the
GIL: `workers` > 0 makes the batches in that many worker processes instead (Grain's
`mp_prefetch`, started with spawn, about a second each), each with `threads` threads.

Config (`config.input`, optional): `threads` (default 2), `prefetch` (batches made ahead,
default 2 per thread) and `workers` (default 0: threads of this process only).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from mtl.errors import ConfigError

DEFAULTS = {"threads": 2, "prefetch": 0, "workers": 0}


def options(input_config: Mapping[str, Any] | None) -> dict[str, int]:
    """`config.input` checked: `{"threads", "prefetch", "workers"}`, integers >= 0."""
    given = dict(input_config or {})
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise ConfigError(
            f"config.input has no field(s) {', '.join(unknown)}; it takes {', '.join(DEFAULTS)}."
        )
    out = DEFAULTS | given
    for key, value in out.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"config.input.{key} must be an integer >= 0, got {value!r}.")
    return out


def prefetched(
    source: Any,
    start: int,
    stop: int,
    rows: slice,
    *,
    threads: int = 2,
    prefetch: int = 0,
    workers: int = 0,
) -> Iterator[Any]:
    """`source(step, rows)` for steps `start..stop-1`, in order, made by `threads` threads (in
    each of `workers` processes, when > 0). Close the iterator to stop the workers early."""
    if (threads == 0 and workers == 0) or start >= stop:
        return (source(step, rows) for step in range(start, stop))
    import grain  # a light import, but only runs that stream need it

    steps = grain.MapDataset.range(start, stop).map(lambda step: source(step, rows))
    threads = max(threads, 1)
    read = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch or 2 * threads)
    stream = steps.to_iter_dataset(read)
    if workers:
        _grain_flags_parsed()
        buffer = max(1, (prefetch or 2 * workers) // workers)
        stream = stream.mp_prefetch(grain.MultiprocessingOptions(workers, buffer))
    return _closing(iter(stream))


def _closing(iterator: Iterator[Any]) -> Iterator[Any]:
    """`iterator`'s items; closing this generator closes it (ends Grain's workers)."""
    try:
        yield from iterator
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()


def _grain_flags_parsed() -> None:
    """Grain's worker processes read Grain's absl flags; outside an absl app (a notebook, a
    test) nothing parsed them, so they take their defaults."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
