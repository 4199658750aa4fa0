"""Writing a script's table into a docs/*.md page between its begin/end markers."""

from __future__ import annotations

import pathlib


def write_between(path: str, begin: str, end: str, markdown: str) -> None:
    """Replaces what lies between `begin` and `end` in the file at `path` with `markdown`."""
    readme = pathlib.Path(path)
    text = readme.read_text()
    if begin not in text or end not in text:
        raise SystemExit(f"{path} lacks the markers {begin} ... {end}.")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{begin}\n{markdown}\n{end}{tail}")


def write_block(path: str, name: str, markdown: str) -> None:
    """Writes `markdown` between `<!-- NAME:begin -->` and `<!-- NAME:end -->` in `path`."""
    write_between(path, f"<!-- {name}:begin -->", f"<!-- {name}:end -->", markdown)
