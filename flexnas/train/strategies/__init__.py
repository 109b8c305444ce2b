"""Training strategies, registered by name: `strategies.get("uniform")`, `strategies.names()`.

A strategy module in this package registers itself with `@register`; the package imports every
module in it on first lookup, so a new strategy is one new file and touches neither this registry
nor the trainer loop.
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import Any, Callable, TypeVar

from flexnas.errors import ConfigError, did_you_mean
from flexnas.train.strategies.base import StepContext, Strategy, step_seed

__all__ = ["Strategy", "StepContext", "step_seed", "register", "get", "names", "describe"]

_REGISTRY: dict[str, type[Strategy]] = {}
_discovered = False

S = TypeVar("S", bound=type[Strategy])


def register(cls: S) -> S:
    """Class decorator: make `cls` available as `strategies.get(cls.name)`."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} must set a non-empty `name` to be registered")
    existing = _REGISTRY.get(cls.name)
    if existing is not None and existing is not cls:
        raise ConfigError(f"strategy '{cls.name}' is already registered by {existing.__module__}")
    _REGISTRY[cls.name] = cls
    return cls


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base" and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


def names() -> list[str]:
    _discover()
    return sorted(_REGISTRY)


def describe() -> list[dict[str, Any]]:
    """Every registered strategy: name, one-line summary, arguments with defaults, supported spaces."""
    _discover()
    rows = []
    for name in names():
        cls = _REGISTRY[name]
        doc = inspect.getdoc(inspect.getmodule(cls)) or inspect.getdoc(cls) or ""
        args = {k: (None if p.default is p.empty else p.default)
                for k, p in inspect.signature(cls).parameters.items() if p.kind is not p.VAR_KEYWORD}
        rows.append({"name": name, "summary": doc.split("\n\n")[0].replace("\n", " "), "arguments": args,
                     "spaces": cls.spaces_supported()})
    return rows


def get(name: str, **kwargs: Any) -> Strategy:
    """Build a registered strategy; unknown names and arguments raise ConfigError."""
    _discover()
    try:
        cls: Callable[..., Strategy] = _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown strategy '{name}'{did_you_mean(name, _REGISTRY)}; "
                          f"known strategies: {', '.join(names())}") from None
    params = inspect.signature(cls).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        for key in kwargs:
            if key not in params:
                raise ConfigError(f"strategy '{name}' has no argument '{key}'{did_you_mean(key, params)}; "
                                  f"its arguments: {', '.join(params) or 'none'}")
    return cls(**kwargs)
