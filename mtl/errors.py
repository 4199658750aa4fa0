"""Errors the engine raises for bad input: one message that names the problem and the fix."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ConfigError(ValueError):
    """A config names something that does not exist, or holds a value that cannot work."""


class DataError(ValueError):
    """Input data is missing, empty, corrupt, or does not match the config."""


def unknown_name(
    kind: str, name: str, known: Iterable[str], field: str | None = None
) -> ConfigError:
    """A `ConfigError` for an unknown `name`, listing the known ones and the closest match."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    close = close or [k for k in known if k in name or name in k][:1]
    hint = f" Did you mean {close[0]!r}?" if close else ""
    where = f" (config field {field})" if field else ""
    return ConfigError(f"Unknown {kind} {name!r}{where}.{hint} Known: {', '.join(known)}.")
