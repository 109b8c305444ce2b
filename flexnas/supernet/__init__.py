"""Weight-sharing supernets and the standalone networks they hand out."""
from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING, Union

import torch
from torch import nn

from flexnas.arch import Arch
from flexnas.supernet.layers import CandidateLayer, ChoiceLayer, UnifiedLayer

if TYPE_CHECKING:
    from flexnas.spaces.base import SearchSpace

__all__ = ["Network", "Supernet", "ChoiceLayer", "CandidateLayer", "UnifiedLayer"]

Probs = Sequence[torch.Tensor]


def _pick(seq: Sequence, where: Union[slice, tuple[int, ...]]) -> Sequence:
    return seq[where] if isinstance(where, slice) else type(seq)(seq[i] for i in where)  # type: ignore[call-arg]


class Network(nn.Module):
    """A standalone network: stem -> layers -> head. What `space.subnet` builds and `extract` returns."""

    def __init__(self, stem: nn.Module, layers: Sequence[nn.Module], head: nn.Module) -> None:
        super().__init__()
        self.stem = stem
        self.layers = nn.Sequential(*layers)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(self.stem(x)))


class Supernet(nn.Module):
    """`forward(x, arch)` runs one path; `forward(x, probs)` runs the weighted mixture, where `probs`
    holds one probability vector per choice point (`space.choices` order)."""

    def __init__(self, space: "SearchSpace", stem: nn.Module, layers: Sequence[ChoiceLayer],
                 head: nn.Module) -> None:
        super().__init__()
        self.space_name = space.name
        self.stem = stem
        self.layers = nn.ModuleList(layers)
        self.head = head
        # What each layer sees: a slice of its own points, or (elastic spaces) the indices of every
        # point it depends on, context included (`space.layer_points`).
        self._slices: list[Union[slice, tuple[int, ...]]] = [
            sl if pts == tuple(range(sl.start, sl.stop)) else pts
            for sl, pts in zip(space.layer_slices, space.layer_points)]

    def forward(self, x: torch.Tensor, arch: Union[Arch, Probs]) -> torch.Tensor:
        x = self.stem(x)
        if isinstance(arch, Arch):
            for layer, sl in zip(self.layers, self._slices):
                x = layer.forward_path(x, _pick(arch.choices, sl))
        else:
            for layer, sl in zip(self.layers, self._slices):
                x = layer.forward_mixture(x, _pick(arch, sl))
        return self.head(x)

    def extract(self, arch: Arch) -> Network:
        """A standalone network holding copies of this path's weights (same output in eval mode)."""
        layers = [layer.extract(_pick(arch.choices, sl)) for layer, sl in zip(self.layers, self._slices)]
        net = Network(copy.deepcopy(self.stem), layers, copy.deepcopy(self.head))
        return net.train(self.training)
