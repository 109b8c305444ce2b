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
        self._slices = space.layer_slices

    def forward(self, x: torch.Tensor, arch: Union[Arch, Probs]) -> torch.Tensor:
        x = self.stem(x)
        if isinstance(arch, Arch):
            for layer, sl in zip(self.layers, self._slices):
                x = layer.forward_path(x, arch.choices[sl])
        else:
            for layer, sl in zip(self.layers, self._slices):
                x = layer.forward_mixture(x, arch[sl])
        return self.head(x)

    def extract(self, arch: Arch) -> Network:
        """A standalone network holding copies of this path's weights (same output in eval mode)."""
        layers = [layer.extract(arch.choices[sl]) for layer, sl in zip(self.layers, self._slices)]
        net = Network(copy.deepcopy(self.stem), layers, copy.deepcopy(self.head))
        return net.train(self.training)
