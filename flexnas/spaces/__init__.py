"""Search spaces, registered by name: `flexnas.spaces.get("proxyless", input_size=32)`."""
from __future__ import annotations

from typing import Any, Callable, Optional

from flexnas.errors import SpaceError, did_you_mean
from flexnas.spaces.base import ChoicePoint, LayerSpec, SearchSpace
from flexnas.spaces.candidate import FBNetSpace, MobileNetV2Space, ProxylessSpace, SPOSSpace
from flexnas.spaces.elastic import BigNASSpace, OFASpace
from flexnas.spaces.nag import NAGSpace
from flexnas.spaces.nb201 import NB201Space
from flexnas.spaces.sgnas import SGNASSpace

__all__ = ["ChoicePoint", "LayerSpec", "SearchSpace", "get", "names", "owner_of", "register"]

_REGISTRY: dict[str, Callable[..., SearchSpace]] = {}


def register(name: str, factory: Callable[..., SearchSpace]) -> None:
    if name in _REGISTRY:
        raise SpaceError(f"space '{name}' is already registered")
    _REGISTRY[name] = factory


def names() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str, **kwargs: Any) -> SearchSpace:
    """Build a registered space; kwargs: input_size, num_classes, width_mult (and space extras)."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise SpaceError(f"unknown space '{name}'{did_you_mean(name, _REGISTRY)}; "
                         f"known spaces: {', '.join(names())}") from None
    try:
        return factory(**kwargs)
    except TypeError as exc:
        raise SpaceError(f"space '{name}': {exc}") from None


def owner_of(text: str, like: SearchSpace) -> Optional[str]:
    """The name of another registered space (built with `like`'s input size and classes) that decodes
    `text`, or None: lets "not a valid arch" errors say "this is a sgnas arch" instead."""
    for name in names():
        if name == like.name:
            continue
        try:
            get(name, input_size=like.input_size, num_classes=like.num_classes).decode(text)
        except Exception:  # noqa: BLE001 - any failure means "not this space"
            continue
        return name
    return None


# Macro (layer-wise), cell-based (NAS-Bench-201, NAG) and elastic weight-entangled (OFA, BigNAS) spaces.
for _cls in (ProxylessSpace, MobileNetV2Space, FBNetSpace, SPOSSpace, SGNASSpace, NB201Space, NAGSpace,
             OFASpace, BigNASSpace):
    register(_cls.name, _cls)
