"""Operations of the cell-based spaces (NAS-Bench-201 and NAG), shared by their standalone subnets,
their supernets and their cost tables, so the three cannot drift apart.

Conventions follow the published code: ReLU before every conv (ReLU-Conv-BN), never in place
(a cell's node feeds several edges), BatchNorm with affine parameters, convs without bias.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from flexnas.errors import ArchError

NB201_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
NAG_OPS = ("sep_conv_3x3", "sep_conv_5x5", "avg_pool_3x3", "max_pool_3x3", "identity")


class ReLUConvBN(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1) -> None:
        super().__init__(nn.ReLU(inplace=False),
                         nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False),
                         nn.BatchNorm2d(c_out))


class Zero(nn.Module):
    """NAS-Bench-201's `none`: the edge contributes nothing (a node fed only by `none` is zero)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul(0.0)


class ResidualReduction(nn.Module):
    """NAS-Bench-201's block between stages: two ReLU-Conv-BN 3x3 (the first at stride 2) plus a
    2x2 average-pool + 1x1 conv shortcut."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv_a = ReLUConvBN(c_in, c_out, 3, 2)
        self.conv_b = ReLUConvBN(c_out, c_out, 3, 1)
        self.shortcut = nn.Sequential(nn.AvgPool2d(2, 2), nn.Conv2d(c_in, c_out, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.conv_b(self.conv_a(x))


class BNReLUPoolHead(nn.Module):
    """NAS-Bench-201's head: BN -> ReLU -> global average pool -> linear."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(F.relu(self.bn(x)).mean((2, 3)))


class PoolHead(nn.Module):
    """NASNet-style head (NAG): global average pool -> linear."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x.mean((2, 3)))


def nb201_op(name: str, channels: int) -> nn.Module:
    """One NAS-Bench-201 edge op; every cell edge keeps shape (stride 1, C -> C)."""
    if name == "none":
        return Zero()
    if name == "skip_connect":
        return nn.Identity()
    if name == "nor_conv_1x1":
        return ReLUConvBN(channels, channels, 1)
    if name == "nor_conv_3x3":
        return ReLUConvBN(channels, channels, 3)
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, 1, 1, count_include_pad=False)
    raise ArchError(f"unknown NAS-Bench-201 op '{name}'; allowed: {', '.join(NB201_OPS)}")


class SepConv(nn.Sequential):
    """NASNet/NAG separable conv, applied twice: (ReLU, depthwise kxk, pointwise 1x1, BN) x 2; only
    the first depthwise conv carries the stride."""

    def __init__(self, channels: int, kernel: int, stride: int) -> None:
        c, p = channels, kernel // 2
        super().__init__(
            nn.ReLU(inplace=False), nn.Conv2d(c, c, kernel, stride, p, groups=c, bias=False),
            nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c),
            nn.ReLU(inplace=False), nn.Conv2d(c, c, kernel, 1, p, groups=c, bias=False),
            nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c))


class FactorizedReduce(nn.Module):
    """Halves the resolution without losing every other pixel: two stride-2 1x1 convs, the second on
    the input shifted by one pixel, concatenated, then BN (ReLU first, as in DARTS/NAG)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        if c_out % 2:
            raise ArchError(f"FactorizedReduce needs an even output width, got {c_out}")
        self.conv_a = nn.Conv2d(c_in, c_out // 2, 1, 2, bias=False)
        self.conv_b = nn.Conv2d(c_in, c_out // 2, 1, 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        shifted = F.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:]
        return self.bn(torch.cat((self.conv_a(x), self.conv_b(shifted)), 1))


def nag_op(name: str, channels: int, stride: int) -> nn.Module:
    """One NAG vertex op at `stride` (2 only for reduction-cell vertices fed by the cell inputs alone)."""
    if name == "sep_conv_3x3":
        return SepConv(channels, 3, stride)
    if name == "sep_conv_5x5":
        return SepConv(channels, 5, stride)
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride, 1, count_include_pad=False)
    if name == "max_pool_3x3":
        return nn.MaxPool2d(3, stride, 1)
    if name == "identity":
        return nn.Identity() if stride == 1 else FactorizedReduce(channels, channels)
    raise ArchError(f"unknown NAG op '{name}'; allowed: {', '.join(NAG_OPS)}")
