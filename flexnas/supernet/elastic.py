"""Elastic (Once-for-All / BigNAS style) supernet layers.

One set of weights at the largest shape serves every subnet: a smaller kernel is the centre slice of
the largest, fewer channels are the leading slice (of convs, BatchNorms and SE), and a stage runs its
first d blocks. Unlike `EntangledMBLayer` (fixed shapes, a private BatchNorm per candidate), widths
here change from one subnet to the next, so BatchNorms are shared and sliced like the convs; the
evaluator recalibrates their statistics per subnet.

A layer's `values` are the choice indices of `space.layer_points` for that layer, context included:
a block reads its input width from the previous stage's width point and its activity from its stage's
depth point. `Dim` says where in `values` each elastic dimension is read. Each spec builds the
standalone module of one config (`build`), which is what `extract` fills with sliced weights and what
the cost tables count, so subnets, extraction and costs cannot drift apart.
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from flexnas.errors import SpaceError
from flexnas.ops.blocks import (BlockStyle, ConvBNAct, HardSigmoid, Head, MBConv, Resize, activation,
                                make_divisible)
from flexnas.supernet.layers import ChoiceLayer, _copy_bn, _sliced_bn, centre_kernel

Values = tuple[int, ...]

# Exact mixtures enumerate the paths in the support of the probabilities; beyond this many paths per
# layer they are refused (elastic spaces are trained by sampling: uniform or sandwich).
MAX_MIXTURE_PATHS = 64


@dataclass(frozen=True)
class Dim:
    """One elastic dimension of a layer: read at `pos` of the layer's values, or fixed (`pos` = -1)."""

    pos: int
    options: tuple[int, ...]

    @classmethod
    def fixed(cls, value: int) -> "Dim":
        return cls(-1, (value,))

    def of(self, values: Values) -> int:
        return self.options[values[self.pos]] if self.pos >= 0 else self.options[0]

    @property
    def max(self) -> int:
        return max(self.options)


@dataclass(frozen=True)
class StemSpec:
    """Resize to the arch's resolution -> 3x3 conv (elastic width) -> optional fixed first block."""

    resolution: Dim
    width: Dim
    stride: int
    act: str
    bn_affine: bool = True
    first_block: Optional[tuple[int, BlockStyle]] = None  # (channels, style) of a fixed k3e1 block

    @property
    def used(self) -> tuple[Dim, ...]:
        return (self.resolution, self.width)

    def out_width(self, values: Values) -> int:
        return self.first_block[0] if self.first_block else self.width.of(values)

    def build(self, values: Values) -> nn.Module:
        c = self.width.of(values)
        parts: list[nn.Module] = [Resize(self.resolution.of(values)),
                                  ConvBNAct(3, c, 3, self.stride, act=self.act, bn_affine=self.bn_affine)]
        if self.first_block:
            parts.append(MBConv(c, self.first_block[0], 3, 1, 1, self.first_block[1]))
        return nn.Sequential(*parts)


@dataclass(frozen=True)
class BlockSpec:
    """Block `index` of a stage: active while the stage depth exceeds `index`."""

    c_in: Dim
    c_out: Dim
    kernel: Dim
    expand: Dim
    depth: Dim
    index: int
    stride: int
    style: BlockStyle

    @property
    def used(self) -> tuple[Dim, ...]:
        return (self.c_in, self.c_out, self.kernel, self.expand, self.depth)

    def config(self, values: Values) -> Optional[tuple[int, int, int, int]]:
        """(c_in, c_out, kernel, expand), or None when the block is beyond the stage depth."""
        if self.depth.of(values) <= self.index:
            return None
        return self.c_in.of(values), self.c_out.of(values), self.kernel.of(values), self.expand.of(values)

    def build(self, values: Values) -> nn.Module:
        cfg = self.config(values)
        if cfg is None:
            return nn.Identity()
        c_in, c_out, k, e = cfg
        return MBConv(c_in, c_out, k, e, self.stride, self.style)


@dataclass(frozen=True)
class HeadSpec:
    """MobileNetV3 head: 1x1 expand to `expand` x the last width (BN, act) -> pool -> 1x1 mix conv
    (elastic width, no BN) -> dropout -> linear."""

    c_in: Dim
    mix: Dim
    num_classes: int
    act: str
    expand: int = 6
    dropout: float = 0.0
    bn_affine: bool = True

    @property
    def used(self) -> tuple[Dim, ...]:
        return (self.c_in, self.mix)

    def build(self, values: Values) -> nn.Module:
        c = self.c_in.of(values)
        return Head(c, self.expand * c, self.num_classes, self.act, dropout=self.dropout,
                    bn_affine=self.bn_affine, mix_channels=self.mix.of(values))


def _pad_channels(y: torch.Tensor, width: int) -> torch.Tensor:
    return F.pad(y, (0, 0, 0, 0, 0, width - y.shape[1])) if y.shape[1] < width else y


class _ElasticLayer(ChoiceLayer):
    """Shared plumbing: exact mixtures over the support of the probabilities of the dims it uses."""

    spec: "StemSpec | BlockSpec | HeadSpec"
    max_out: int  # channels of the widest output; mixture outputs are zero-padded to it

    def _uses_input_width(self) -> bool:
        return not isinstance(self.spec, StemSpec)

    def forward_mixture(self, x: torch.Tensor, probs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Probability-weighted sum of this layer's paths on the same input. Narrower outputs are
        zero-padded to the widest, which the next layer's leading-slice weights read exactly as the
        narrow tensor (zeros add nothing to a conv). Points the layer does not use are summed out."""
        positions = sorted({d.pos for d in self.spec.used if d.pos >= 0})
        supports = [[int(i) for i in torch.nonzero(probs[p].detach() != 0).flatten()] for p in positions]
        n_paths = 1
        for s in supports:
            n_paths *= len(s)
        if n_paths > MAX_MIXTURE_PATHS:
            raise SpaceError(f"an elastic layer's mixture spans {n_paths} paths (at most {MAX_MIXTURE_PATHS}); "
                             f"train elastic spaces by sampling paths (strategy 'uniform' or 'sandwich')")
        n_values = len(probs)
        out: Optional[torch.Tensor] = None
        for combo in itertools.product(*supports):
            values = [0] * n_values
            weight = probs[positions[0]].new_ones(()) if positions else x.new_ones(())
            for p, i in zip(positions, combo):
                values[p] = i
                weight = weight * probs[p][i]
            y = self.forward_path(x, tuple(values))
            if y.dim() == 4:
                y = _pad_channels(y, self.max_out)
            if out is not None and out.shape != y.shape:
                raise SpaceError("a mixture over resolutions is not defined: paths differ in spatial size")
            out = weight * y if out is None else out + weight * y
        assert out is not None
        return out


class ElasticStemLayer(_ElasticLayer):
    def __init__(self, spec: StemSpec, option_counts: tuple[int, ...]) -> None:
        super().__init__()
        self.spec, self.option_counts = spec, option_counts
        self.conv = nn.Conv2d(3, spec.width.max, 3, spec.stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(spec.width.max, affine=spec.bn_affine)
        self.act = activation(spec.act)
        self.first_block = (MBConv(spec.width.max, spec.first_block[0], 3, 1, 1, spec.first_block[1])
                            if spec.first_block else None)
        self.max_out = spec.first_block[0] if spec.first_block else spec.width.max

    def forward_path(self, x: torch.Tensor, values: Values) -> torch.Tensor:
        r, c = self.spec.resolution.of(values), self.spec.width.of(values)
        if x.shape[-2:] != (r, r):
            x = F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False)
        x = self.act(_sliced_bn(F.conv2d(x, self.conv.weight[:c], None, self.spec.stride, 1), self.bn, c))
        return self.first_block(x) if self.first_block is not None else x

    def extract(self, values: Values) -> nn.Module:
        net = self.spec.build(values).to(self.conv.weight.device)
        c = self.spec.width.of(values)
        with torch.no_grad():
            net[1][0].weight.copy_(self.conv.weight[:c])
            _copy_bn(net[1][1], self.bn, slice(0, c))
            if self.first_block is not None:
                net[2].load_state_dict(self.first_block.state_dict())
        return net


class ElasticMBLayer(_ElasticLayer):
    """One elastic inverted-residual block: weights at the largest input width, expansion, kernel and
    output width; a config uses the leading channels and the centre kernel."""

    def __init__(self, spec: BlockSpec, option_counts: tuple[int, ...]) -> None:
        super().__init__()
        self.spec, self.option_counts = spec, option_counts  # counts of the points it reads
        style = spec.style
        c_in, c_out, k = spec.c_in.max, spec.c_out.max, spec.kernel.max
        mid = c_in * spec.expand.max
        self.max_kernel, self.max_out = k, c_out
        self.has_expand = max(spec.expand.options) != 1 or style.pw_at_e1
        if self.has_expand:
            self.expand = nn.Conv2d(c_in, mid, 1, bias=False)
            self.expand_bn = nn.BatchNorm2d(mid, affine=style.bn_affine)
        self.depthwise = nn.Conv2d(mid, mid, k, spec.stride, k // 2, groups=mid, bias=False)
        self.depthwise_bn = nn.BatchNorm2d(mid, affine=style.bn_affine)
        if style.se_ratio > 0:
            reduced = make_divisible(mid * style.se_ratio, style.se_divisor)
            self.se_reduce = nn.Conv2d(mid, reduced, 1, bias=True)
            self.se_expand = nn.Conv2d(reduced, mid, 1, bias=True)
            self.se_gate = HardSigmoid()
        self.project = nn.Conv2d(mid, c_out, 1, bias=False)
        self.project_bn = nn.BatchNorm2d(c_out, affine=style.bn_affine)
        self.shortcut = nn.Conv2d(c_in, c_out, 1, bias=False) if style.conv_shortcut else None
        self.act = activation(style.act)

    def residual_bns(self) -> list[nn.BatchNorm2d]:
        return [self.project_bn]

    @property
    def use_residual(self) -> bool:
        """Zero-initialise the last BN when some config is an identity-residual block (as MBConv does)."""
        return self.spec.stride == 1 and bool(set(self.spec.c_in.options) & set(self.spec.c_out.options))

    def _weights(self, c_in: int, c_out: int, k: int, e: int) -> dict[str, torch.Tensor]:
        mid = c_in * e
        w = {"depthwise": centre_kernel(self.depthwise.weight[:mid], k), "project": self.project.weight[:c_out, :mid]}
        if e != 1 or self.spec.style.pw_at_e1:
            w["expand"] = self.expand.weight[:mid, :c_in]
        if self.spec.style.se_ratio > 0:
            r = make_divisible(mid * self.spec.style.se_ratio, self.spec.style.se_divisor)
            w.update(se_reduce=self.se_reduce.weight[:r, :mid], se_reduce_b=self.se_reduce.bias[:r],
                     se_expand=self.se_expand.weight[:mid, :r], se_expand_b=self.se_expand.bias[:mid])
        if self.shortcut is not None and c_in != c_out:
            w["shortcut"] = self.shortcut.weight[:c_out, :c_in]
        return w

    def forward_path(self, x: torch.Tensor, values: Values) -> torch.Tensor:
        cfg = self.spec.config(values)
        if cfg is None:
            return x
        c_in, c_out, k, e = cfg
        if x.shape[1] != c_in:  # a zero-padded mixture input
            x = x[:, :c_in]
        mid, stride = c_in * e, self.spec.stride
        w = self._weights(c_in, c_out, k, e)
        h = x
        if "expand" in w:
            h = self.act(_sliced_bn(F.conv2d(h, w["expand"]), self.expand_bn, mid))
        h = self.act(_sliced_bn(F.conv2d(h, w["depthwise"], None, stride, k // 2, 1, mid), self.depthwise_bn, mid))
        if "se_reduce" in w:
            s = F.relu(F.conv2d(h.mean((2, 3), keepdim=True), w["se_reduce"], w["se_reduce_b"]))
            h = h * self.se_gate(F.conv2d(s, w["se_expand"], w["se_expand_b"]))
        h = _sliced_bn(F.conv2d(h, w["project"]), self.project_bn, c_out)
        if stride == 1 and c_in == c_out:
            return h + x
        if self.shortcut is not None:
            res = F.avg_pool2d(x, stride, ceil_mode=True) if stride > 1 else x
            return h + (F.conv2d(res, w["shortcut"]) if "shortcut" in w else res)
        return h

    def extract(self, values: Values) -> nn.Module:
        cfg = self.spec.config(values)
        if cfg is None:
            return nn.Identity()
        c_in, c_out, k, e = cfg
        mid = c_in * e
        block = self.spec.build(values).to(self.depthwise.weight.device)
        assert isinstance(block, MBConv)
        w = self._weights(c_in, c_out, k, e)
        with torch.no_grad():
            if block.expand is not None:
                block.expand[0].weight.copy_(w["expand"])
                _copy_bn(block.expand[1], self.expand_bn, slice(0, mid))
            block.depthwise[0].weight.copy_(w["depthwise"])
            _copy_bn(block.depthwise[1], self.depthwise_bn, slice(0, mid))
            if block.se is not None:
                block.se.reduce.weight.copy_(w["se_reduce"])
                block.se.reduce.bias.copy_(w["se_reduce_b"])
                block.se.expand.weight.copy_(w["se_expand"])
                block.se.expand.bias.copy_(w["se_expand_b"])
            block.project[0].weight.copy_(w["project"])
            _copy_bn(block.project[1], self.project_bn, slice(0, c_out))
            if block.shortcut is not None and "shortcut" in w:
                block.shortcut[-1].weight.copy_(w["shortcut"])
        return block


class ElasticHeadLayer(_ElasticLayer):
    def __init__(self, spec: HeadSpec, option_counts: tuple[int, ...]) -> None:
        super().__init__()
        self.spec, self.option_counts = spec, option_counts
        c, m = spec.c_in.max, spec.mix.max
        self.conv = nn.Conv2d(c, spec.expand * c, 1, bias=False)
        self.bn = nn.BatchNorm2d(spec.expand * c, affine=spec.bn_affine)
        self.mix = nn.Conv2d(spec.expand * c, m, 1, bias=False)
        self.act = activation(spec.act)
        self.dropout = nn.Dropout(spec.dropout)
        self.classifier = nn.Linear(m, spec.num_classes)
        self.max_out = spec.num_classes

    def forward_path(self, x: torch.Tensor, values: Values) -> torch.Tensor:
        c, m = self.spec.c_in.of(values), self.spec.mix.of(values)
        wide = self.spec.expand * c
        if x.shape[1] != c:
            x = x[:, :c]
        h = self.act(_sliced_bn(F.conv2d(x, self.conv.weight[:wide, :c]), self.bn, wide))
        h = self.act(F.conv2d(h.mean((2, 3), keepdim=True), self.mix.weight[:m, :wide])).flatten(1)
        return F.linear(self.dropout(h), self.classifier.weight[:, :m], self.classifier.bias)

    def extract(self, values: Values) -> nn.Module:
        c, m = self.spec.c_in.of(values), self.spec.mix.of(values)
        wide = self.spec.expand * c
        head = self.spec.build(values).to(self.conv.weight.device)
        assert isinstance(head, Head) and head.mix is not None
        with torch.no_grad():
            head.conv[0].weight.copy_(self.conv.weight[:wide, :c])
            _copy_bn(head.conv[1], self.bn, slice(0, wide))
            head.mix[0].weight.copy_(self.mix.weight[:m, :wide])
            head.classifier.weight.copy_(self.classifier.weight[:, :m])
            head.classifier.bias.copy_(self.classifier.bias)
        return head
