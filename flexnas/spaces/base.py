"""The search-space interface shared by every space.

A space is a list of searchable layers (`LayerSpec`), each owning one or more choice points. Spaces
only describe their macro table and how one layer's config is spelled, built and repaired; sampling,
mutation, crossover, string round-trips, cost tables and the supernet are generic and live here.
"""
from __future__ import annotations

import itertools
import math
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from torch import nn

from flexnas.arch import Arch
from flexnas.errors import ArchError, SpaceError

if TYPE_CHECKING:
    from flexnas.cost.model import CostModel
    from flexnas.supernet import Network, Supernet

Config = tuple[int, ...]


@dataclass(frozen=True)
class ChoicePoint:
    name: str
    options: tuple[str, ...]


@dataclass(frozen=True)
class LayerSpec:
    """One searchable layer: its shapes (input resolution `in_hw`) and its choice points."""

    index: int
    c_in: int
    c_out: int
    stride: int
    in_hw: int
    points: tuple[ChoicePoint, ...]

    @property
    def shape_preserving(self) -> bool:
        return self.stride == 1 and self.c_in == self.c_out

    @property
    def option_counts(self) -> tuple[int, ...]:
        return tuple(len(p.options) for p in self.points)


def conv_out(size: int, stride: int) -> int:
    """Spatial size after a 'same'-padded odd-kernel conv."""
    return -(-size // stride)


class SearchSpace(ABC):
    """Subclasses define the macro (`_build_layers`, stem, head) and one layer's spelling and modules."""

    name: str = ""

    def __init__(self, input_size: int = 224, num_classes: int = 1000, width_mult: float = 1.0) -> None:
        if input_size < 1 or num_classes < 1 or width_mult <= 0:
            raise SpaceError(f"{self.name}: input_size, num_classes and width_mult must be positive "
                             f"(got {input_size}, {num_classes}, {width_mult})")
        self.input_size = int(input_size)
        self.num_classes = int(num_classes)
        self.width_mult = float(width_mult)
        self.layers: list[LayerSpec] = self._build_layers()

    # ---- what a space defines ------------------------------------------------------------------
    @abstractmethod
    def _build_layers(self) -> list[LayerSpec]: ...

    @abstractmethod
    def _stem(self) -> nn.Module: ...

    @abstractmethod
    def _head(self) -> nn.Module: ...

    @abstractmethod
    def _stem_out(self) -> tuple[int, int]:
        """(channels, spatial size) after the stem: the first searchable layer's input."""

    @abstractmethod
    def _supernet_layer(self, layer: LayerSpec) -> nn.Module: ...

    @abstractmethod
    def _subnet_layer(self, layer: LayerSpec, config: Config, **options: Any) -> nn.Module: ...

    @abstractmethod
    def _encode_layer(self, layer: LayerSpec, config: Config) -> str: ...

    @abstractmethod
    def _decode_layer(self, layer: LayerSpec, token: str) -> Config: ...

    def _repair_layer(self, layer: LayerSpec, config: Config) -> Config:
        """Map any raw config to the valid one it stands for (identity for most spaces)."""
        return config

    def _check_layer(self, layer: LayerSpec, config: Config) -> None:
        """Raise ArchError for a config that is not valid as written (no repair)."""
        if self._repair_layer(layer, config) != config:
            raise ArchError(f"layer {layer.index}: '{self._encode_layer(layer, config)}' is not canonical")

    def _cost_key(self, layer: LayerSpec, config: Config) -> Hashable:
        """Configs with equal keys cost the same: lets cost tables measure each distinct module once."""
        return config

    def _layer_cost(self, layer: LayerSpec, config: Config,
                    measure: Callable[[Config], dict[str, float]]) -> dict[str, float]:
        """Cost of one canonical layer config; `measure` counts the real module (memoised by key).
        Spaces whose layer cost is a known linear combination of a few configs override this."""
        return measure(config)

    # ---- derived structure ----------------------------------------------------------------------
    @cached_property
    def choices(self) -> list[ChoicePoint]:
        return [p for layer in self.layers for p in layer.points]

    @cached_property
    def layer_slices(self) -> list[slice]:
        out, start = [], 0
        for layer in self.layers:
            out.append(slice(start, start + len(layer.points)))
            start += len(layer.points)
        return out

    @cached_property
    def layer_points(self) -> list[tuple[int, ...]]:
        """Per layer, the choice points (indices into `choices`) its supernet module and its cost
        depend on: its own points, plus, in elastic spaces, points owned by other layers (the
        resolution, the previous stage's width, the stage depth). Cost tables and supernet layers are
        keyed on these, so a layer's cost stays a table lookup even when it depends on other layers."""
        return [tuple(range(sl.start, sl.stop)) for sl in self.layer_slices]

    def split(self, arch: Arch) -> list[Config]:
        return [arch.choices[sl] for sl in self.layer_slices]

    def _arch(self, configs: Sequence[Config]) -> Arch:
        return Arch(self.name, tuple(c for cfg in configs for c in cfg))

    def describe(self) -> str:
        return (f"{self.name} space: {len(self.layers)} searchable layers, {len(self.choices)} choice points, "
                f"input {self.input_size}, {self.num_classes} classes, width x{self.width_mult:g}, "
                f"{self.size():.3g} architectures")

    def size(self) -> float:
        """Number of distinct valid architectures."""
        return math.prod(len(self._valid_configs(layer)) for layer in self.layers)

    def _valid_configs(self, layer: LayerSpec) -> set[Config]:
        return {self._repair_layer(layer, cfg)
                for cfg in itertools.product(*(range(n) for n in layer.option_counts))}

    # ---- validation and strings -----------------------------------------------------------------
    def validate(self, arch: Arch) -> Arch:
        if not isinstance(arch, Arch):
            raise ArchError(f"expected an Arch, got {type(arch).__name__}")
        if arch.space != self.name:
            raise ArchError(f"arch belongs to space '{arch.space}', not '{self.name}'")
        if len(arch.choices) != len(self.choices):
            raise ArchError(f"{self.name} archs have {len(self.choices)} choices, got {len(arch.choices)}")
        for layer, cfg in zip(self.layers, self.split(arch)):
            for point, c in zip(layer.points, cfg):
                if not 0 <= c < len(point.options):
                    raise ArchError(f"layer {layer.index}: choice {c} out of range for '{point.name}' "
                                    f"(0..{len(point.options) - 1})")
            self._check_layer(layer, cfg)
        return arch

    def encode(self, arch: Arch) -> str:
        self.validate(arch)
        return "-".join(self._encode_layer(layer, cfg) for layer, cfg in zip(self.layers, self.split(arch)))

    def decode(self, text: str) -> Arch:
        if not isinstance(text, str) or not text.strip():
            raise ArchError(f"empty architecture string for space '{self.name}'")
        tokens = text.strip().split("-")
        if len(tokens) != len(self.layers):
            raise ArchError(f"{self.name} archs have {len(self.layers)} layers joined by '-', got {len(tokens)}")
        configs = [self._decode_layer(layer, tok.strip()) for layer, tok in zip(self.layers, tokens)]
        return self.validate(self._arch(configs))

    # ---- sampling and variation -----------------------------------------------------------------
    def repair(self, choices: Sequence[int]) -> Arch:
        raw = Arch(self.name, tuple(choices))
        return self._arch([self._repair_layer(layer, cfg) for layer, cfg in zip(self.layers, self.split(raw))])

    def sample(self, rng: random.Random) -> Arch:
        return self.repair([rng.randrange(len(p.options)) for p in self.choices])

    def mutate(self, arch: Arch, prob: float, rng: random.Random) -> Arch:
        """Each choice point moves to a different option with probability `prob`."""
        out = list(arch.choices)
        for i, point in enumerate(self.choices):
            n = len(point.options)
            if n > 1 and rng.random() < prob:
                out[i] = (out[i] + rng.randrange(1, n)) % n
        return self.repair(out)

    def crossover(self, a: Arch, b: Arch, rng: random.Random) -> Arch:
        """Uniform crossover of whole layers, so a layer's config always comes from one parent."""
        return self._arch([ca if rng.random() < 0.5 else cb for ca, cb in zip(self.split(a), self.split(b))])

    def smallest(self, metric: str = "macs") -> Arch:
        return self.cost_model().extreme(metric, largest=False)

    def largest(self, metric: str = "macs") -> Arch:
        return self.cost_model().extreme(metric, largest=True)

    def cost_range(self, metric: str = "macs") -> tuple[float, float]:
        return self.cost_model().range(metric)

    # ---- networks and costs ---------------------------------------------------------------------
    def supernet(self) -> "Supernet":
        from flexnas.ops.init import init_weights
        from flexnas.supernet import Supernet

        net = Supernet(self, self._stem(), [self._supernet_layer(layer) for layer in self.layers], self._head())
        return init_weights(net)

    def subnet(self, arch: Arch, **options: Any) -> "Network":
        """A freshly initialised standalone network for `arch`. `options` are space-specific extras
        (e.g. SGNAS's `se_ratio`, `act`) that change the standalone net but not the arch."""
        from flexnas.ops.init import init_weights
        from flexnas.supernet import Network

        self.validate(arch)
        layers = [self._subnet_layer(layer, cfg, **options) for layer, cfg in zip(self.layers, self.split(arch))]
        return init_weights(Network(self._stem_options(**options), layers, self._head_options(**options)))

    def _stem_options(self, **options: Any) -> nn.Module:
        return self._stem()

    def _head_options(self, **options: Any) -> nn.Module:
        return self._head()

    def cost_model(self, latency: Any = None, allow_foreign_table: bool = False) -> "CostModel":
        """The space's cost model. `latency` (a `LatencyTable` or its JSON path) adds `latency_ms` and
        stays attached: later calls, e.g. inside searchers, return the model with latency."""
        if "_cost_model" not in self.__dict__:
            from flexnas.cost.model import CostModel

            self.__dict__["_cost_model"] = CostModel.measure(self)
        if latency is not None:
            from flexnas.cost.latency import attach_latency

            return attach_latency(self, latency, allow_foreign_table)
        return self.__dict__["_cost_model"]

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, input_size={self.input_size}, "
                f"num_classes={self.num_classes}, width_mult={self.width_mult})")


CELL_MIN_INPUT = 8


def check_cell_input(space_name: str, input_size: int, shape_reason: str) -> None:
    """The cell spaces' CIFAR-style macro: two stride-2 reductions (total stride 4) whose halved maps
    must agree, and a last stage of at least 2x2. `shape_reason` says why the size must divide by 4."""
    if input_size < CELL_MIN_INPUT:
        raise SpaceError(f"{space_name}: input size {input_size} is too small for its strides "
                         f"(total stride 4, and the last stage needs at least 2x2; use at least {CELL_MIN_INPUT})")
    if input_size % 4:
        raise SpaceError(f"{space_name}: input size {input_size} must be a multiple of 4 ({shape_reason}), "
                         f"e.g. {input_size // 4 * 4}")
