"""Searchable supernet layers. Each runs one path (`forward_path`), a probability mixture
(`forward_mixture`), and hands out a standalone copy of one path (`extract`)."""
from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from flexnas.errors import ArchError
from flexnas.ops.blocks import BlockStyle, MixedKernelBlock, activation, build_op


class ChoiceLayer(nn.Module, ABC):
    """Base of searchable layers: `option_counts` gives each of its choice points' option count."""

    option_counts: tuple[int, ...]

    @abstractmethod
    def forward_path(self, x: torch.Tensor, config: tuple[int, ...]) -> torch.Tensor: ...

    @abstractmethod
    def forward_mixture(self, x: torch.Tensor, probs: Sequence[torch.Tensor]) -> torch.Tensor: ...

    @abstractmethod
    def extract(self, config: tuple[int, ...]) -> nn.Module: ...


class CandidateLayer(ChoiceLayer):
    """Multi-path layer (ProxylessNAS, FBNet, SPOS): one module per candidate op, one choice point."""

    def __init__(self, ops: Sequence[str], c_in: int, c_out: int, stride: int, style: BlockStyle) -> None:
        super().__init__()
        self.option_counts = (len(ops),)
        self.candidates = nn.ModuleList(build_op(op, c_in, c_out, stride, style) for op in ops)

    def forward_path(self, x: torch.Tensor, config: tuple[int, ...]) -> torch.Tensor:
        return self.candidates[config[0]](x)

    def forward_mixture(self, x: torch.Tensor, probs: Sequence[torch.Tensor]) -> torch.Tensor:
        p = probs[0]
        return sum(p[i] * op(x) for i, op in enumerate(self.candidates))  # type: ignore[return-value]

    def extract(self, config: tuple[int, ...]) -> nn.Module:
        return copy.deepcopy(self.candidates[config[0]])


def _sliced_bn(x: torch.Tensor, bn: nn.BatchNorm2d, n: int) -> torch.Tensor:
    """BatchNorm over the first n channels of `bn`; running stats update in place through the views."""
    mean = bn.running_mean[:n] if bn.running_mean is not None else None
    var = bn.running_var[:n] if bn.running_var is not None else None
    weight = bn.weight[:n] if bn.weight is not None else None
    bias = bn.bias[:n] if bn.bias is not None else None
    use_batch_stats = bn.training or mean is None
    if bn.training and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
    return F.batch_norm(x, mean, var, weight, bias, use_batch_stats, bn.momentum or 0.0, bn.eps)


def active_count_distribution(active: torch.Tensor) -> torch.Tensor:
    """P(number of active sub-blocks = c), c = 0..n, for independent activation probabilities."""
    dist = torch.ones(1, dtype=active.dtype, device=active.device)
    for a in active:
        dist = torch.cat((dist * (1 - a), dist.new_zeros(1))) + torch.cat((dist.new_zeros(1), dist * a))
    return dist


class UnifiedLayer(ChoiceLayer):
    """SGNAS's unified layer: one 1x1 expansion to n_sub * C_in split into n_sub sub-blocks; each
    sub-block picks a depthwise kernel or nothing (so e = active count); one shared projection whose
    BatchNorm is chosen by the active count, because its statistics depend on how many sub-blocks sum in.

    Choice point i takes an index into `kernels` or `len(kernels)` for "off". Active sub-blocks are
    packed to the front (the space repairs configs), so sub-block i always owns channel slice i."""

    def __init__(self, c_in: int, c_out: int, stride: int, kernels: tuple[int, ...], n_sub: int,
                 style: BlockStyle) -> None:
        super().__init__()
        self.c_in, self.c_out, self.stride = c_in, c_out, stride
        self.kernels, self.n_sub, self.style = kernels, n_sub, style
        self.option_counts = (len(kernels) + 1,) * n_sub
        self.use_residual = stride == 1 and c_in == c_out
        self.expand = nn.Conv2d(c_in, n_sub * c_in, 1, bias=False)
        self.expand_bn = nn.BatchNorm2d(n_sub * c_in, affine=style.bn_affine)
        self.dw = nn.ModuleList(nn.ModuleList(
            nn.Conv2d(c_in, c_in, k, stride, k // 2, groups=c_in, bias=False) for k in kernels)
            for _ in range(n_sub))
        self.dw_bn = nn.ModuleList(nn.ModuleList(
            nn.BatchNorm2d(c_in, affine=style.bn_affine) for _ in kernels) for _ in range(n_sub))
        self.project = nn.Conv2d(n_sub * c_in, c_out, 1, bias=False)
        self.project_bn = nn.ModuleList(nn.BatchNorm2d(c_out, affine=style.bn_affine) for _ in range(n_sub))
        self.act = activation(style.act)

    def residual_bns(self) -> list[nn.BatchNorm2d]:
        return list(self.project_bn)

    def _kernel_indices(self, config: tuple[int, ...]) -> list[int]:
        return [c for c in config if c < len(self.kernels)]

    def forward_path(self, x: torch.Tensor, config: tuple[int, ...]) -> torch.Tensor:
        active = self._kernel_indices(config)
        e = len(active)
        if e == 0:
            return x
        h = F.conv2d(x, self.expand.weight[: e * self.c_in])
        h = self.act(_sliced_bn(h, self.expand_bn, e * self.c_in))
        parts = torch.split(h, self.c_in, dim=1)
        h = torch.cat([self.act(self.dw_bn[i][k](self.dw[i][k](p))) for i, (k, p) in enumerate(zip(active, parts))], 1)
        h = self.project_bn[e - 1](F.conv2d(h, self.project.weight[:, : e * self.c_in]))
        return h + x if self.use_residual else h

    def forward_mixture(self, x: torch.Tensor, probs: Sequence[torch.Tensor]) -> torch.Tensor:
        h = self.act(self.expand_bn(self.expand(x)))
        parts = torch.split(h, self.c_in, dim=1)
        outs = []
        for i, p in enumerate(parts):
            outs.append(sum(probs[i][k] * self.act(self.dw_bn[i][k](self.dw[i][k](p)))
                            for k in range(len(self.kernels))))
        h = self.project(torch.cat(outs, 1))
        active = torch.stack([1 - pr[len(self.kernels)] for pr in probs])
        count = active_count_distribution(active)
        out = sum(count[c] * self.project_bn[c - 1](h) for c in range(1, self.n_sub + 1))
        return out + x if self.use_residual else out  # type: ignore[return-value]

    def extract(self, config: tuple[int, ...]) -> nn.Module:
        active = self._kernel_indices(config)
        if not active:
            return nn.Identity()
        e, c = len(active), self.c_in
        block = MixedKernelBlock(c, self.c_out, tuple(self.kernels[k] for k in active), self.stride,
                                 self.style).to(self.expand.weight.device)
        with torch.no_grad():
            block.expand[0].weight.copy_(self.expand.weight[: e * c])
            _copy_bn(block.expand[1], self.expand_bn, slice(0, e * c))
            for i, k in enumerate(active):
                block.depthwise[i][0].weight.copy_(self.dw[i][k].weight)
                _copy_bn(block.depthwise[i][1], self.dw_bn[i][k], slice(None))
            block.project[0].weight.copy_(self.project.weight[:, : e * c])
            _copy_bn(block.project[1], self.project_bn[e - 1], slice(None))
        return block


def centre_kernel(weight: torch.Tensor, k: int) -> torch.Tensor:
    """The centre k x k slice of a larger square kernel (Once-for-All's kernel sharing)."""
    start = (weight.shape[-1] - k) // 2
    return weight[..., start:start + k, start:start + k]


def _copy_bn(dst: nn.BatchNorm2d, src: nn.BatchNorm2d, rows: slice) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        s, d = getattr(src, name), getattr(dst, name)
        if s is not None and d is not None:
            d.data.copy_(s.data[rows])
    if src.num_batches_tracked is not None and dst.num_batches_tracked is not None:
        dst.num_batches_tracked.copy_(src.num_batches_tracked)


class EntangledMBLayer(ChoiceLayer):
    """Weight-entangled MBConv candidates (Once-for-All style): one expansion, depthwise and projection
    weight at the largest kernel and expansion; a candidate uses the centre kxk slice of the depthwise
    kernel and the leading C_in*e channels. Every candidate keeps private BatchNorms, since its
    statistics differ. Sharing makes different paths compute related features, so a uniformly sampled
    supernet trains in far fewer steps than with independent candidates."""

    def __init__(self, ops: Sequence[str], c_in: int, c_out: int, stride: int, style: BlockStyle) -> None:
        from flexnas.ops.blocks import parse_op

        super().__init__()
        specs = [parse_op(op) for op in ops]
        for op, spec in zip(ops, specs):
            if spec.kind not in ("mbconv", "skip") or spec.groups != 1 or (spec.expand == 1 and not style.pw_at_e1):
                raise ArchError(f"op '{op}' cannot share weights with other candidates; "
                                f"entangled weights need plain MBConv ops (k<K>e<E>) and skip")
        self.ops, self.specs, self.style = tuple(ops), specs, style
        self.c_in, self.c_out, self.stride = c_in, c_out, stride
        self.option_counts = (len(ops),)
        self.use_residual = stride == 1 and c_in == c_out
        conv = [s for s in specs if s.kind == "mbconv"]
        self.max_kernel = max(s.kernel for s in conv)
        mid = c_in * max(s.expand for s in conv)
        self.expand = nn.Conv2d(c_in, mid, 1, bias=False)
        self.depthwise = nn.Conv2d(mid, mid, self.max_kernel, stride, self.max_kernel // 2, groups=mid, bias=False)
        self.project = nn.Conv2d(mid, c_out, 1, bias=False)

        def bns(width: Callable[[object], int]) -> nn.ModuleList:
            return nn.ModuleList(nn.BatchNorm2d(width(s), affine=style.bn_affine) if s.kind == "mbconv"
                                 else nn.Identity() for s in specs)

        self.expand_bn = bns(lambda s: c_in * s.expand)  # type: ignore[attr-defined]
        self.depthwise_bn = bns(lambda s: c_in * s.expand)  # type: ignore[attr-defined]
        self.project_bn = bns(lambda s: c_out)
        self.act = activation(style.act)

    def residual_bns(self) -> list[nn.BatchNorm2d]:
        return [bn for bn in self.project_bn if isinstance(bn, nn.BatchNorm2d)]

    def _weights(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        spec = self.specs[i]
        mid, k = self.c_in * spec.expand, spec.kernel
        return (self.expand.weight[:mid], centre_kernel(self.depthwise.weight[:mid], k),
                self.project.weight[:, :mid])

    def forward_path(self, x: torch.Tensor, config: tuple[int, ...]) -> torch.Tensor:
        i = config[0]
        spec = self.specs[i]
        if spec.kind == "skip":
            return x
        w_expand, w_dw, w_project = self._weights(i)
        h = self.act(self.expand_bn[i](F.conv2d(x, w_expand)))
        h = self.act(self.depthwise_bn[i](F.conv2d(h, w_dw, None, self.stride, spec.kernel // 2, 1, w_dw.shape[0])))
        h = self.project_bn[i](F.conv2d(h, w_project))
        return h + x if self.use_residual else h

    def forward_mixture(self, x: torch.Tensor, probs: Sequence[torch.Tensor]) -> torch.Tensor:
        return sum(probs[0][i] * self.forward_path(x, (i,)) for i in range(len(self.ops)))  # type: ignore[return-value]

    def extract(self, config: tuple[int, ...]) -> nn.Module:
        from flexnas.ops.blocks import MBConv

        i = config[0]
        spec = self.specs[i]
        if spec.kind == "skip":
            return nn.Identity()
        block = MBConv(self.c_in, self.c_out, spec.kernel, spec.expand, self.stride, self.style)
        block = block.to(self.expand.weight.device)
        w_expand, w_dw, w_project = self._weights(i)
        with torch.no_grad():
            assert block.expand is not None
            block.expand[0].weight.copy_(w_expand)
            _copy_bn(block.expand[1], self.expand_bn[i], slice(None))
            block.depthwise[0].weight.copy_(w_dw)
            _copy_bn(block.depthwise[1], self.depthwise_bn[i], slice(None))
            block.project[0].weight.copy_(w_project)
            _copy_bn(block.project[1], self.project_bn[i], slice(None))
        return block
