"""Search spaces, registered by name: `flexnas.spaces.get("proxyless", input_size=32)`."""
from __future__ import annotations

from typing import Any, Callable

from flexnas.errors import SpaceError, did_you_mean
from flexnas.spaces.base import ChoicePoint, LayerSpec, SearchSpace
from flexnas.spaces.candidate import FBNetSpace, MobileNetV2Space, ProxylessSpace, SPOSSpace
from flexnas.spaces.sgnas import SGNASSpace

__all__ = ["ChoicePoint", "LayerSpec", "SearchSpace", "get", "names", "register"]

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


for _cls in (ProxylessSpace, MobileNetV2Space, FBNetSpace, SPOSSpace, SGNASSpace):
    register(_cls.name, _cls)

# Cell-based spaces (issue 7), registered after the macro spaces.
from flexnas.spaces.nag import NAGSpace  # noqa: E402
from flexnas.spaces.nb201 import NB201Space  # noqa: E402

for _cls in (NB201Space, NAGSpace):
    register(_cls.name, _cls)

# Elastic weight-entangled spaces (issue 4): Once-for-All MobileNetV3 and BigNAS/AttentiveNAS.
from flexnas.spaces.elastic import BigNASSpace, OFASpace  # noqa: E402

for _cls in (OFASpace, BigNASSpace):
    register(_cls.name, _cls)
