"""The SGNAS unified space: each layer expands to 6x its input, split into 6 sub-blocks that each
pick a depthwise kernel (3, 5, 7) or nothing, so kernel mix and expansion ratio are searched together
by one single-path layer."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from flexnas.errors import ArchError
from flexnas.ops.blocks import BlockStyle, MixedKernelBlock
from flexnas.spaces.base import ChoicePoint, Config, LayerSpec
from flexnas.spaces.macro import Macro, MacroSpace, Stage
from flexnas.supernet.layers import UnifiedLayer

KERNELS = (3, 5, 7)
SUB_BLOCKS = 6
OFF = len(KERNELS)


class SGNASSpace(MacroSpace):
    """Arch strings per layer: `k` + active kernels joined by `.` (`k5.7.3` is e=3), or `skip` for a
    layer with no active sub-block (only where the layer keeps its shape). Standalone subnets accept
    `se_ratio` and `act` options (SGNAS-A/B/C use squeeze-excitation and h-swish)."""

    name = "sgnas"
    macro = Macro(
        stem_channels=32, fixed_block=("k3e1", 16),
        stages=(Stage(32, 2, 2), Stage(40, 4, 2), Stage(80, 4, 2), Stage(96, 4, 1), Stage(192, 4, 2),
                Stage(320, 1, 1)),
        head_channels=1280, style=BlockStyle(act="relu6", se_divisor=1), head_dropout=0.2)

    def _points(self, index: int, c_in: int, c_out: int, stride: int) -> tuple[ChoicePoint, ...]:
        labels = tuple(f"k{k}" for k in KERNELS) + ("off",)
        return tuple(ChoicePoint(f"layer{index}.sub{i}", labels) for i in range(SUB_BLOCKS))

    @staticmethod
    def _active(config: Config) -> list[int]:
        return [c for c in config if c != OFF]

    def _repair_layer(self, layer: LayerSpec, config: Config) -> Config:
        active = self._active(config)
        if not active and not layer.shape_preserving:
            active = [0]  # the cheapest valid config: one k3 sub-block
        return tuple(active) + (OFF,) * (SUB_BLOCKS - len(active))

    def _check_layer(self, layer: LayerSpec, config: Config) -> None:
        active = self._active(config)
        if list(config[: len(active)]) != active:
            raise ArchError(f"layer {layer.index}: active sub-blocks must come first, got {config}")
        if not active and not layer.shape_preserving:
            raise ArchError(f"layer {layer.index}: 'skip' is not allowed where the shape changes "
                            f"({layer.c_in}->{layer.c_out} channels, stride {layer.stride})")

    def _cost_key(self, layer: LayerSpec, config: Config) -> tuple[int, ...]:
        return tuple(sorted(self._active(config)))

    def _layer_cost(self, layer: LayerSpec, config: Config,
                    measure: Callable[[Config], dict[str, float]]) -> dict[str, float]:
        """Expansion rows, depthwise units and projection columns grow by one sub-block's worth per
        active sub-block; only the projection's BatchNorm is shared. So a layer costs
        shared + sum(unit(k)), and four measured configs give every other one exactly (the cost test
        checks this against hook counts of whole subnets)."""
        active = self._active(config)
        if len(active) <= 1:
            return measure(config)
        pad = (OFF,) * (SUB_BLOCKS - 2)
        one, two = measure((0,) + pad + (OFF,)), measure((0, 0) + pad)
        out = {}
        for m in one:
            unit3 = two[m] - one[m]
            units = {k: measure((k, 0) + pad)[m] - one[m] for k in set(active)}
            out[m] = one[m] - unit3 + sum(units[k] for k in active)
        return out

    def _encode_layer(self, layer: LayerSpec, config: Config) -> str:
        active = self._active(config)
        return "k" + ".".join(str(KERNELS[c]) for c in active) if active else "skip"

    def _decode_layer(self, layer: LayerSpec, token: str) -> Config:
        allowed = f"'k' + 1-{SUB_BLOCKS} kernels from {KERNELS} joined by '.', e.g. 'k5.3.7'"
        if layer.shape_preserving:
            allowed += ", or 'skip'"
        if token == "skip":
            return (OFF,) * SUB_BLOCKS
        if not token.startswith("k") or not token[1:]:
            raise ArchError(f"layer {layer.index}: '{token}' is not a layer; allowed: {allowed}")
        parts = token[1:].split(".")
        if len(parts) > SUB_BLOCKS:
            raise ArchError(f"layer {layer.index}: '{token}' has {len(parts)} sub-blocks, at most {SUB_BLOCKS}")
        config = []
        for part in parts:
            if not part.isdigit() or int(part) not in KERNELS:
                raise ArchError(f"layer {layer.index}: kernel '{part}' in '{token}' is not one of {KERNELS}; "
                                f"allowed: {allowed}")
            config.append(KERNELS.index(int(part)))
        return tuple(config) + (OFF,) * (SUB_BLOCKS - len(config))

    def _supernet_layer(self, layer: LayerSpec) -> nn.Module:
        return UnifiedLayer(layer.c_in, layer.c_out, layer.stride, KERNELS, SUB_BLOCKS, self._style())

    def _subnet_layer(self, layer: LayerSpec, config: Config, **options: Any) -> nn.Module:
        active = self._active(config)
        if not active:
            return nn.Identity()
        return MixedKernelBlock(layer.c_in, layer.c_out, tuple(KERNELS[c] for c in active), layer.stride,
                                self._style(**options))
