"""Errors the engine raises for bad input: one message that names the problem and the fix."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any


class ConfigError(ValueError):
    """A config names something that does not exist, or holds a value that cannot work."""


class DataError(ValueError):
    """Input data is missing, empty, corrupt, or does not match the config."""


class CheckpointError(DataError):
    """A checkpoint in the workdir cannot be read (damaged files)."""


class WorkdirFileError(DataError):
    """A file a run wrote in its workdir (config.json, results.json, ...) is damaged."""


class WorkdirBusyError(ConfigError):
    """Another run holds the workdir's lock."""


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


def unknown_field(config: Any, dotted: str) -> str | None:
    """A message for the first part of `dotted` (`a.b.c`) that `config` lacks, else None.

    Names the closest existing field, as the full `--config.` override to type instead.
    """
    node, done = config, []
    for part in dotted.split("."):
        if not hasattr(node, "keys"):  # a dict or ConfigDict (which is no Mapping)
            return None  # a field below a plain value: not a naming problem
        if part not in node:
            fields = sorted(str(k) for k in node)
            close = difflib.get_close_matches(part, fields, n=1, cutoff=0.5)
            where = ".".join(["config", *done])
            hint = f" Did you mean --{where}.{close[0]}?" if close else ""
            return (
                f"Unknown config field {part!r} in --config.{dotted}.{hint} "
                f"Fields of {where}: {', '.join(fields)}."
            )
        node, done = node[part], [*done, part]
    return None
