"""The one block factory every space builds from.

Spaces are data: a macro table plus op tokens (`k3e6`, `k5e1g2`, `shuffle3`, `skip`, ...). `build_op`
turns a token into a standalone module, so the supernet's candidate paths, the standalone subnets and
the cost tables are built by the same code and cannot drift apart.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from flexnas.errors import ArchError


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round channels to a multiple of `divisor`, never dropping more than 10% (MobileNet rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class HardSigmoid(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(x + 3.0) / 6.0


class HardSwish(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * F.relu6(x + 3.0) / 6.0


_ACTIVATIONS = {
    "relu": lambda: nn.ReLU(inplace=True),
    "relu6": lambda: nn.ReLU6(inplace=True),
    "hswish": HardSwish,
    "swish": nn.SiLU,
    "none": nn.Identity,
}


def activation(name: str) -> nn.Module:
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ArchError(f"unknown activation '{name}'; allowed: {sorted(_ACTIVATIONS)}") from None


class ConvBNAct(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int = 1, stride: int = 1, groups: int = 1,
                 act: str = "relu", bn_affine: bool = True) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(c_out, affine=bn_affine),
            activation(act),
        )


class SqueezeExcite(nn.Module):
    """SE gate: pool -> 1x1 reduce (+bias) -> act -> 1x1 expand (+bias) -> gate."""

    def __init__(self, channels: int, reduced: int, gate: str = "hsigmoid") -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1, bias=True)
        self.act = nn.ReLU(inplace=True)
        self.expand = nn.Conv2d(reduced, channels, 1, bias=True)
        self.gate = HardSigmoid() if gate == "hsigmoid" else nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.expand(self.act(self.reduce(s))))


def drop_connect(branch: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Drop the residual branch of whole samples with probability `rate` and rescale the kept ones
    (drop-connect of MnasNet/EfficientNet, a.k.a. stochastic depth); identity in eval mode."""
    if not training or rate <= 0.0:
        return branch
    keep = 1.0 - rate
    mask = torch.empty((branch.shape[0],) + (1,) * (branch.dim() - 1), dtype=branch.dtype,
                       device=branch.device).bernoulli_(keep)
    return branch * mask / keep


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


@dataclass(frozen=True)
class BlockStyle:
    """Per-space conventions of the shared blocks (what differs between papers' implementations)."""

    act: str = "relu6"
    pw_at_e1: bool = False  # FBNet keeps the 1x1 expansion at e=1; MobileNetV2/ProxylessNAS drop it
    se_ratio: float = 0.0  # 0 disables squeeze-excitation
    se_divisor: int = 8
    bn_affine: bool = True
    conv_shortcut: bool = False  # AttentiveNAS: pool + 1x1 conv residual where the shape changes


class Resize(nn.Module):
    """Resample the input to `size` x `size` (bilinear): elastic-resolution nets carry their resolution."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] == (self.size, self.size):
            return x
        return F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)


class PoolConvShortcut(nn.Sequential):
    """Residual path where a block changes shape (AttentiveNAS): average pool by the stride (ceil mode,
    matching the 'same'-padded conv's output size), then a 1x1 conv without BN if the width changes."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        parts: list[nn.Module] = []
        if stride > 1:
            parts.append(nn.AvgPool2d(stride, ceil_mode=True))
        if c_in != c_out:
            parts.append(nn.Conv2d(c_in, c_out, 1, bias=False))
        super().__init__(*parts)


class MBConv(nn.Module):
    """Inverted residual: [1x1 expand] -> kxk depthwise -> [SE] -> 1x1 project, residual when shapes match.

    `groups` > 1 makes both pointwise convs grouped and shuffles channels after the expansion (FBNet's
    `e1g2`)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, expand: int, stride: int,
                 style: BlockStyle, groups: int = 1) -> None:
        super().__init__()
        mid = c_in * expand
        self.groups = groups
        self.use_residual = stride == 1 and c_in == c_out
        self.drop_connect = 0.0  # set per block by the standalone training strategy
        self.expand = (ConvBNAct(c_in, mid, 1, groups=groups, act=style.act, bn_affine=style.bn_affine)
                       if expand != 1 or style.pw_at_e1 else None)
        self.depthwise = ConvBNAct(mid, mid, kernel, stride, groups=mid, act=style.act,
                                   bn_affine=style.bn_affine)
        self.se = (SqueezeExcite(mid, make_divisible(mid * style.se_ratio, style.se_divisor))
                   if style.se_ratio > 0 else None)
        self.project = ConvBNAct(mid, c_out, 1, groups=groups, act="none", bn_affine=style.bn_affine)
        self.shortcut = (PoolConvShortcut(c_in, c_out, stride)
                         if style.conv_shortcut and not self.use_residual else None)

    def residual_bns(self) -> list[nn.BatchNorm2d]:
        """The BN ending the residual branch (zero-initialised so the block starts as identity)."""
        return [self.project[1]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.expand is not None:
            h = self.expand(h)
            if self.groups > 1:
                h = channel_shuffle(h, self.groups)
        h = self.depthwise(h)
        if self.se is not None:
            h = self.se(h)
        h = self.project(h)
        if self.shortcut is not None:
            return h + self.shortcut(x)
        return drop_connect(h, self.drop_connect, self.training) + x if self.use_residual else h


class ShuffleV2Block(nn.Module):
    """ShuffleNetV2 unit as in SPOS: stride 1 splits channels in half and transforms one half; stride 2
    runs a projection branch and the main branch on the whole input. `xception` replaces the main
    branch by three 3x3 depthwise + 1x1 units."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, xception: bool,
                 style: BlockStyle) -> None:
        super().__init__()
        # Two branches when the shape changes (stride 2, or the stride-1 stage entry of CIFAR variants).
        two_branch = stride == 2 or c_in != c_out
        inp = c_in if two_branch else c_in // 2
        mid = c_out // 2
        out_main = c_out - inp
        act, affine = style.act, style.bn_affine
        if xception:
            units = [(inp, mid, stride), (mid, mid, 1), (mid, out_main, 1)]
            main: list[nn.Module] = []
            for a, b, s in units:
                main += [ConvBNAct(a, a, 3, s, groups=a, act="none", bn_affine=affine),
                         ConvBNAct(a, b, 1, act=act, bn_affine=affine)]
            self.main = nn.Sequential(*main)
        else:
            self.main = nn.Sequential(
                ConvBNAct(inp, mid, 1, act=act, bn_affine=affine),
                ConvBNAct(mid, mid, kernel, stride, groups=mid, act="none", bn_affine=affine),
                ConvBNAct(mid, out_main, 1, act=act, bn_affine=affine),
            )
        self.proj = (nn.Sequential(
            ConvBNAct(inp, inp, kernel, stride, groups=inp, act="none", bn_affine=affine),
            ConvBNAct(inp, inp, 1, act=act, bn_affine=affine),
        ) if two_branch else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.proj is None:
            # SPOS's split: even channels pass through, odd channels are transformed.
            b, c, h, w = x.shape
            pairs = x.reshape(b * c // 2, 2, h * w).permute(1, 0, 2).reshape(2, b, c // 2, h, w)
            return torch.cat((pairs[0], self.main(pairs[1])), 1)
        return torch.cat((self.proj(x), self.main(x)), 1)


class MixedKernelBlock(nn.Module):
    """SGNAS standalone layer: 1x1 expand to e*C_in split into e groups, each with its own depthwise
    kernel (MixConv-like), [SE], one shared 1x1 projection. e = len(kernels)."""

    def __init__(self, c_in: int, c_out: int, kernels: tuple[int, ...], stride: int,
                 style: BlockStyle) -> None:
        super().__init__()
        if not kernels:
            raise ArchError("a mixed-kernel block needs at least one active sub-block")
        e = len(kernels)
        self.c_in = c_in
        self.use_residual = stride == 1 and c_in == c_out
        self.drop_connect = 0.0  # set per block by the standalone training strategy
        self.expand = ConvBNAct(c_in, e * c_in, 1, act=style.act, bn_affine=style.bn_affine)
        self.depthwise = nn.ModuleList(
            ConvBNAct(c_in, c_in, k, stride, groups=c_in, act=style.act, bn_affine=style.bn_affine)
            for k in kernels)
        mid = e * c_in
        self.se = (SqueezeExcite(mid, make_divisible(mid * style.se_ratio, style.se_divisor))
                   if style.se_ratio > 0 else None)
        self.project = ConvBNAct(mid, c_out, 1, act="none", bn_affine=style.bn_affine)

    def residual_bns(self) -> list[nn.BatchNorm2d]:
        return [self.project[1]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.expand(x)
        parts = torch.split(h, self.c_in, dim=1)
        h = torch.cat([dw(p) for dw, p in zip(self.depthwise, parts)], 1)
        if self.se is not None:
            h = self.se(h)
        h = self.project(h)
        return drop_connect(h, self.drop_connect, self.training) + x if self.use_residual else h


class Head(nn.Module):
    """1x1 conv -> global pool -> [1x1 mix conv + act, no BN] -> dropout -> linear. The mix conv after
    the pool (`mix_channels` > 0) is MobileNetV3's head, as in Once-for-All and AttentiveNAS."""

    def __init__(self, c_in: int, c_head: int, num_classes: int, act: str, dropout: float = 0.0,
                 linear_bias: bool = True, bn_affine: bool = True, mix_channels: int = 0) -> None:
        super().__init__()
        self.conv = ConvBNAct(c_in, c_head, 1, act=act, bn_affine=bn_affine)
        self.mix = (nn.Sequential(nn.Conv2d(c_head, mix_channels, 1, bias=False), activation(act))
                    if mix_channels > 0 else None)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(mix_channels or c_head, num_classes, bias=linear_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x).mean((2, 3), keepdim=self.mix is not None)
        if self.mix is not None:
            h = self.mix(h).flatten(1)
        return self.classifier(self.dropout(h))


_MB_TOKEN = re.compile(r"^k(\d+)e(\d+)(?:g(\d+))?$")


@dataclass(frozen=True)
class OpSpec:
    """A parsed op token."""

    kind: str  # "mbconv", "shuffle", "xception", "skip"
    kernel: int = 0
    expand: int = 0
    groups: int = 1

    @property
    def changes_nothing(self) -> bool:
        return self.kind == "skip"


def parse_op(token: str) -> OpSpec:
    if token == "skip":
        return OpSpec("skip")
    if token == "xception":
        return OpSpec("xception", kernel=3)
    if token.startswith("shuffle") and token[7:].isdigit():
        return OpSpec("shuffle", kernel=int(token[7:]))
    m = _MB_TOKEN.match(token)
    if m:
        return OpSpec("mbconv", int(m.group(1)), int(m.group(2)), int(m.group(3) or 1))
    raise ArchError(f"unknown op '{token}'")


def build_op(token: str, c_in: int, c_out: int, stride: int, style: BlockStyle) -> nn.Module:
    """The shared factory: op token + shapes + the space's style -> a standalone module."""
    op = parse_op(token)
    if op.kind == "skip":
        if stride != 1 or c_in != c_out:
            raise ArchError(f"'skip' cannot change shape ({c_in}->{c_out} channels, stride {stride})")
        return nn.Identity()
    if op.kind == "mbconv":
        return MBConv(c_in, c_out, op.kernel, op.expand, stride, style, groups=op.groups)
    return ShuffleV2Block(c_in, c_out, op.kernel, stride, op.kind == "xception", style)


def style_with(style: BlockStyle, **changes: object) -> BlockStyle:
    return replace(style, **changes)  # type: ignore[arg-type]
