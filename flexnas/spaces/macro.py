"""Spaces defined by a macro table (stem, optional fixed block, stages, head) — the MobileNet /
ShuffleNet family. Subclasses only say what one searchable layer can be."""
from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, replace
from typing import Any, Optional

from torch import nn

from flexnas.errors import SpaceError
from flexnas.ops.blocks import BlockStyle, ConvBNAct, Head, build_op, make_divisible
from flexnas.spaces.base import ChoicePoint, LayerSpec, SearchSpace, conv_out

# Below this input size the CIFAR variant is used: stem stride 1 and the first reducing stage at
# stride 1 (as ProxylessNAS/FBNet/SPOS CIFAR ports do), so 32x32 ends at 4x4 and 8x8 at 1x1.
IMAGENET_MIN_INPUT = 128


@dataclass(frozen=True)
class Stage:
    channels: int
    repeats: int
    stride: int


@dataclass(frozen=True)
class Macro:
    stem_channels: int
    stages: tuple[Stage, ...]
    head_channels: int
    style: BlockStyle
    fixed_block: Optional[tuple[str, int]] = None  # (op token, channels) right after the stem
    head_dropout: float = 0.0
    linear_bias: bool = True


class MacroSpace(SearchSpace):
    macro: Macro

    def __init__(self, input_size: int = 224, num_classes: int = 1000, width_mult: float = 1.0,
                 head_channels: Optional[int] = None, macro: Optional[Macro] = None) -> None:
        """`head_channels` overrides the macro's head width (FBNet-A uses 1504 instead of 1984)."""
        if macro is not None:
            self.macro = macro
        if head_channels is not None:
            if head_channels < 1:
                raise SpaceError(f"{self.name}: head_channels must be positive, got {head_channels}")
            self.macro = replace(self.macro, head_channels=int(head_channels))
        super().__init__(input_size, num_classes, width_mult)

    # ---- shapes ---------------------------------------------------------------------------------
    @property
    def imagenet_strides(self) -> bool:
        return self.input_size >= IMAGENET_MIN_INPUT

    def _ch(self, c: int) -> int:
        return make_divisible(c * self.width_mult) if self.width_mult != 1.0 else c

    @property
    def _stem_stride(self) -> int:
        return 2 if self.imagenet_strides else 1

    def _stem_out(self) -> tuple[int, int]:
        hw = conv_out(self.input_size, self._stem_stride)
        fixed = self.macro.fixed_block
        return (self._ch(fixed[1]) if fixed else self._ch(self.macro.stem_channels)), hw

    def _build_layers(self) -> list[LayerSpec]:
        c, hw = self._stem_out()
        total_stride = self._stem_stride
        reduce_first = not self.imagenet_strides
        layers: list[LayerSpec] = []
        for stage in self.macro.stages:
            c_out = self._ch(stage.channels)
            for i in range(stage.repeats):
                stride = stage.stride if i == 0 else 1
                if stride == 2 and reduce_first:
                    stride, reduce_first = 1, False
                layers.append(LayerSpec(len(layers), c, c_out, stride, hw,
                                        self._points(len(layers), c, c_out, stride)))
                hw, c, total_stride = conv_out(hw, stride), c_out, total_stride * stride
        if self.input_size < total_stride:
            raise SpaceError(f"{self.name}: input size {self.input_size} is too small for its strides "
                             f"(total stride {total_stride}; use an input of at least {total_stride})")
        return layers

    @abstractmethod
    def _points(self, index: int, c_in: int, c_out: int, stride: int) -> tuple[ChoicePoint, ...]:
        """The choice points of one searchable layer with these shapes."""

    # ---- fixed parts ----------------------------------------------------------------------------
    def _style(self, **options: Any) -> BlockStyle:
        """The macro's block style with standalone-subnet options (e.g. `act`, `se_ratio`) applied."""
        unknown = set(options) - set(BlockStyle.__dataclass_fields__)
        if unknown:
            raise SpaceError(f"{self.name}: unknown subnet option(s) {sorted(unknown)}; "
                             f"allowed: {sorted(BlockStyle.__dataclass_fields__)}")
        return replace(self.macro.style, **options) if options else self.macro.style

    def _stem_options(self, **options: Any) -> nn.Module:
        style = self._style(**options)
        stem_c = self._ch(self.macro.stem_channels)
        parts: list[nn.Module] = [ConvBNAct(3, stem_c, 3, self._stem_stride, act=style.act,
                                            bn_affine=style.bn_affine)]
        if self.macro.fixed_block:
            token, ch = self.macro.fixed_block
            parts.append(build_op(token, stem_c, self._ch(ch), 1, style))
        return nn.Sequential(*parts)

    def _head_options(self, **options: Any) -> nn.Module:
        style = self._style(**options)
        head_c = self.macro.head_channels
        if self.width_mult > 1.0:
            head_c = make_divisible(head_c * self.width_mult)
        return Head(self.layers[-1].c_out, head_c, self.num_classes, style.act,
                    dropout=self.macro.head_dropout, linear_bias=self.macro.linear_bias,
                    bn_affine=style.bn_affine)

    def _stem(self) -> nn.Module:
        return self._stem_options()

    def _head(self) -> nn.Module:
        return self._head_options()
