"""Name -> factory tables, so configs pick trunks, heads and methods by name."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

import ml_collections

from mtl.errors import ConfigError, unknown_name

T = TypeVar("T", bound=Callable[..., Any])


class Registry(Generic[T]):
    """A table of named factories with clear errors for unknown names and arguments.

    `@REGISTRY.register("name")` adds a factory, `REGISTRY.register_lazy("name", "module:attr")`
    one imported on first use (so a run loads only its own code); `REGISTRY.get("name")`
    returns it or raises a
    `ConfigError` that lists the known names and suggests the closest one. Factories take their
    options as keyword arguments with defaults, which `default_config` turns into a config block
    so that every option can be overridden from the command line.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._table: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(factory: T) -> T:
            if name in self._table:
                raise ValueError(f"{self.kind} {name!r} is registered twice.")
            self._table[name] = factory
            return factory

        return add

    def register_lazy(self, name: str, target: str) -> None:
        """`target` ("package.module:attribute") is imported when `name` is first asked for."""
        if name in self._table:
            raise ValueError(f"{self.kind} {name!r} is registered twice.")
        self._table[name] = target  # type: ignore[assignment]

    def get(self, name: str, field: str | None = None) -> T:
        if name not in self._table:
            raise unknown_name(self.kind, name, self._table, field)
        entry = self._table[name]
        if isinstance(entry, str):
            module, attribute = entry.split(":")
            entry = self._table[name] = getattr(importlib.import_module(module), attribute)
        return entry

    def options(self, name: str, skip: tuple[str, ...] = ()) -> dict[str, Any]:
        """The keyword options of factory `name` with their defaults (minus `skip`)."""
        factory = self.get(name)
        # NNX module classes hide __init__'s signature behind their metaclass.
        target = factory.__init__ if isinstance(factory, type) else factory
        params = inspect.signature(target).parameters.values()
        return {
            p.name: p.default
            for p in params
            if p.default is not inspect.Parameter.empty and p.name not in skip
        }

    def default_config(
        self, default: str, skip: tuple[str, ...] = (), key: str = "name"
    ) -> ml_collections.ConfigDict:
        """`{key: default, <each factory>: {its keyword defaults}}` as a ConfigDict."""
        block = {key: default}
        for name in self:
            block[name] = self.options(name, skip)
        return ml_collections.ConfigDict(block)

    def options_from(self, name: str, options: Mapping[str, Any] | None, field: str) -> dict:
        """`options` checked against the factory's keywords and the types of their defaults.

        Unknown options and values of the wrong type raise a `ConfigError` that names the
        config field and lists what is accepted.
        """
        if isinstance(options, ml_collections.ConfigDict):
            options = options.to_dict()
        options = dict(options or {})
        accepted = self.options(name)
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            listed = ", ".join(f"{k}={v!r}" for k, v in sorted(accepted.items())) or "none"
            named = ", ".join(map(repr, unknown))
            raise ConfigError(
                f"{self.kind} {name!r} has no option(s) {named} (config field {field}). "
                f"Accepted (with defaults): {listed}."
            )
        return {
            k: _typed(self.kind, name, f"{field}.{k}", v, accepted[k]) for k, v in options.items()
        }

    def __contains__(self, name: object) -> bool:
        return name in self._table

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._table))


def _typed(kind: str, name: str, field: str, value: Any, default: Any) -> Any:
    """`value` if it has the type of `default` (an int passes for a float, a list for a
    tuple, anything for a None default); else a `ConfigError`."""
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, tuple | list):
        ok = isinstance(value, tuple | list)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ConfigError(
            f"{kind} {name!r}: config field {field} must be a {type(default).__name__}, "
            f"got {value!r} ({type(value).__name__})."
        )
    return value
