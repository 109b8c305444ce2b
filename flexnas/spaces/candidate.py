"""Multi-path spaces: each searchable layer picks one op from a candidate list (ProxylessNAS, FBNet,
SPOS/ShuffleNetV2, and MobileNetV2's macro with the ProxylessNAS candidates)."""
from __future__ import annotations

from typing import Any, Optional

from torch import nn

from flexnas.errors import ArchError, SpaceError, did_you_mean
from flexnas.ops.blocks import BlockStyle, build_op
from flexnas.spaces.base import ChoicePoint, Config, LayerSpec
from flexnas.spaces.macro import Macro, MacroSpace, Stage
from flexnas.supernet.layers import CandidateLayer, EntangledMBLayer


WEIGHT_SHARING = ("independent", "entangled")


class CandidateSpace(MacroSpace):
    """`weight_sharing="independent"` gives each candidate op its own weights (SPOS, ProxylessNAS);
    `"entangled"` shares one set of MBConv weights among a layer's candidates, Once-for-All style
    (kernels as centre slices, expansions as leading channels). Arch strings, standalone subnets and
    costs are the same either way: only how the supernet shares weights differs."""

    ops: tuple[str, ...] = ()

    def __init__(self, input_size: int = 224, num_classes: int = 1000, width_mult: float = 1.0,
                 head_channels: Optional[int] = None, weight_sharing: str = "independent") -> None:
        if weight_sharing not in WEIGHT_SHARING:
            raise SpaceError(f"{self.name}: unknown weight_sharing '{weight_sharing}'"
                             f"{did_you_mean(weight_sharing, WEIGHT_SHARING)}; allowed: {', '.join(WEIGHT_SHARING)}")
        self.weight_sharing = weight_sharing
        super().__init__(input_size, num_classes, width_mult, head_channels)

    def _points(self, index: int, c_in: int, c_out: int, stride: int) -> tuple[ChoicePoint, ...]:
        shape_preserving = stride == 1 and c_in == c_out
        options = tuple(op for op in self.ops if op != "skip" or shape_preserving)
        return (ChoicePoint(f"layer{index}", options),)

    def _supernet_layer(self, layer: LayerSpec) -> nn.Module:
        if self.weight_sharing == "entangled":
            return EntangledMBLayer(layer.points[0].options, layer.c_in, layer.c_out, layer.stride, self._style())
        return CandidateLayer(layer.points[0].options, layer.c_in, layer.c_out, layer.stride,
                              self._style())

    def _subnet_layer(self, layer: LayerSpec, config: Config, **options: Any) -> nn.Module:
        op = layer.points[0].options[config[0]]
        return build_op(op, layer.c_in, layer.c_out, layer.stride, self._style(**options))

    def _encode_layer(self, layer: LayerSpec, config: Config) -> str:
        return layer.points[0].options[config[0]]

    def _decode_layer(self, layer: LayerSpec, token: str) -> Config:
        options = layer.points[0].options
        if token in options:
            return (options.index(token),)
        if token == "skip" and token in self.ops:
            raise ArchError(f"layer {layer.index}: 'skip' is not allowed where the shape changes "
                            f"({layer.c_in}->{layer.c_out} channels, stride {layer.stride}); "
                            f"allowed: {', '.join(options)}")
        raise ArchError(f"layer {layer.index}: unknown op '{token}'; allowed: {', '.join(options)}")


_MB_OPS = ("k3e3", "k3e6", "k5e3", "k5e6", "k7e3", "k7e6", "skip")


class ProxylessSpace(CandidateSpace):
    """ProxylessNAS mobile macro; candidates MBConv k{3,5,7} x e{3,6} + skip. The first stage is 32
    wide as in the authors' released `proxyless_mobile` net (24 is MobileNetV2's width)."""

    name = "proxyless"
    ops = _MB_OPS
    macro = Macro(
        stem_channels=32, fixed_block=("k3e1", 16),
        stages=(Stage(32, 4, 2), Stage(40, 4, 2), Stage(80, 4, 2), Stage(96, 4, 1), Stage(192, 4, 2),
                Stage(320, 1, 1)),
        head_channels=1280, style=BlockStyle(act="relu6"))


class MobileNetV2Space(CandidateSpace):
    """MobileNetV2's macro with the ProxylessNAS candidates (MobileNetV2 itself is all `k3e6`)."""

    name = "mobilenetv2"
    ops = _MB_OPS
    macro = Macro(
        stem_channels=32, fixed_block=("k3e1", 16),
        stages=(Stage(24, 2, 2), Stage(32, 3, 2), Stage(64, 4, 2), Stage(96, 3, 1), Stage(160, 3, 2),
                Stage(320, 1, 1)),
        head_channels=1280, style=BlockStyle(act="relu6"))


class FBNetSpace(CandidateSpace):
    """FBNet's macro and its 9 candidates (TBS layers). FBNet keeps the 1x1 expansion at e=1."""

    name = "fbnet"
    ops = ("k3e1", "k3e1g2", "k3e3", "k3e6", "k5e1", "k5e1g2", "k5e3", "k5e6", "skip")
    macro = Macro(
        stem_channels=16,
        stages=(Stage(16, 1, 1), Stage(24, 4, 2), Stage(32, 4, 2), Stage(64, 4, 2), Stage(112, 4, 1),
                Stage(184, 4, 2), Stage(352, 1, 1)),
        head_channels=1984, style=BlockStyle(act="relu", pw_at_e1=True))


class SPOSSpace(CandidateSpace):
    """ShuffleNetV2 one-shot space of SPOS and DSNAS."""

    name = "spos"
    ops = ("shuffle3", "shuffle5", "shuffle7", "xception")
    macro = Macro(
        stem_channels=16,
        stages=(Stage(64, 4, 2), Stage(160, 4, 2), Stage(320, 8, 2), Stage(640, 4, 2)),
        head_channels=1024, style=BlockStyle(act="relu"), head_dropout=0.1, linear_bias=False)
