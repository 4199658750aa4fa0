"""The JSON files a run keeps in its workdir: written whole or not at all, read back with one
clear error when damaged.

A run killed while writing a file (a full disk, SIGKILL, a copy cut short) leaves it
truncated. Writes here go to a temporary file that is renamed over the target, so a reader
sees the old file or the new one, never half of one. A damaged file read back raises a
`WorkdirFileError` naming the file, what is wrong (line and column) and the fix; nothing is
deleted or rewritten.

    write_json(f"{workdir}/results.json", {"test": ...})
    results = read_json(f"{workdir}/results.json", fix="Run the same command again.")
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from etils import epath

from mtl.errors import WorkdirFileError

# What to do about a damaged config.json: it says which model the checkpoints beside it hold.
CONFIG_FIX = (
    "It records the config of the checkpoints beside it. Move it away and run the config that "
    "trained them (the next run records it again; a different model is still refused from the "
    "checkpoints' array shapes), or use a new --workdir."
)


def read_json(path: epath.PathLike, *, fix: str) -> Any:
    """The JSON value in `path`; `WorkdirFileError` (naming `path` and `fix`) if it does not
    parse. A missing file raises FileNotFoundError as usual: callers decide what that means."""
    path = epath.Path(path)
    text = path.read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise damaged(path, _what(e, text), fix) from None


def check_jsonl(path: epath.PathLike, *, fix: str) -> int:
    """Checks that every line of a JSON-lines file (e.g. metrics.jsonl) is one complete
    record; returns the number of records. A missing file has none."""
    path = epath.Path(path)
    if not path.exists():
        return 0
    lines = path.read_text().split("\n")
    last = lines.pop()  # "" when the file ends with the newline that ends its last record
    if last:
        raise damaged(path, f"line {len(lines) + 1} is cut off: it has no newline", fix)
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise damaged(path, f"line {number}: {_what(e, line)}", fix) from None
        if not isinstance(record, dict):
            raise damaged(path, f"line {number} is not a JSON object", fix)
    return len(lines)


def write_json(path: epath.PathLike, value: Any, *, sort_keys: bool = False) -> None:
    """Writes `value` as indented JSON to `path` through a temporary file renamed over it
    (NumPy scalars and arrays become numbers and lists)."""
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    temporary.write_text(json.dumps(value, indent=2, sort_keys=sort_keys, default=_plain))
    # Atomic on one file system; on an object store (gs://) a copy of the whole object.
    temporary.replace(path)


def damaged(path: epath.PathLike, what: str, fix: str) -> WorkdirFileError:
    return WorkdirFileError(f"{path} is damaged or truncated ({what}). {fix} Nothing was deleted.")


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist"):  # NumPy and JAX scalars and arrays
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _what(error: json.JSONDecodeError, text: str) -> str:
    if not text.strip():
        return "it is empty"
    if error.pos >= len(text.rstrip()) or error.msg.startswith("Unterminated string"):
        return f"it ends in the middle of a value, at line {error.lineno}"
    return f"{error.msg}: line {error.lineno}, column {error.colno}"
