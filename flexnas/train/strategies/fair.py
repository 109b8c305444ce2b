"""Strict fairness (FairNAS, Chu et al. 2021): every candidate of every layer is trained on every batch.

Each step draws, independently per layer, a random permutation of that layer's candidates; path `i`
takes the `i`-th entry of every layer's permutation. The m paths run on the same batch, their
gradients accumulate, and the loop takes one optimiser step, so no candidate gets more updates than
another (the "expressivity / update" bias of uniform sampling, where one candidate may be drawn several
steps in a row while another starves, is gone by construction).
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from flexnas.arch import Arch
from flexnas.train.strategies import register
from flexnas.train.strategies._common import check_choice, require_single_choice, single_choice_spaces
from flexnas.train.strategies.base import Metric, StepContext, Strategy

if TYPE_CHECKING:
    from flexnas.spaces.base import SearchSpace

__all__ = ["Fair", "fair_paths"]

_REDUCTIONS = ("sum", "mean")


def _layer_sequence(n: int, m: int, rng: random.Random) -> list[int]:
    """A random order of m draws over n candidates in which each candidate appears floor(m/n) or
    ceil(m/n) times: whole copies of 0..n-1, plus m mod n distinct candidates picked uniformly at
    random, shuffled. For n == m this is a uniform random permutation."""
    seq = list(range(n)) * (m // n) + rng.sample(range(n), m % n)
    rng.shuffle(seq)
    return seq


def fair_paths(space: "SearchSpace", rng: random.Random) -> list[Arch]:
    """The m = max candidates-per-layer paths of one strictly fair step (one choice point per layer).

    Guarantee: in each step every candidate of a layer with n candidates is trained floor(m/n) or
    ceil(m/n) times, i.e. exactly once when n == m, and at least once always. Where n < m (layers that
    cannot hold `skip` because they change shape), the m mod n candidates trained one extra time are
    drawn uniformly at random, so over many steps every candidate of a layer is trained equally often
    in expectation, and within one step counts never differ by more than one."""
    counts = [len(p.options) for p in space.choices]
    m = max(counts)
    columns = [_layer_sequence(n, m, rng) for n in counts]
    return [space.repair([col[i] for col in columns]) for i in range(m)]


@register
class Fair(Strategy):
    """FairNAS strict fairness. `reduction="sum"` (the paper) accumulates the m paths' gradients as
    they are; `"mean"` divides each path's loss by m, so the update has the scale of one uniform step
    and the same learning rate carries over from `uniform`.

    Supported on spaces with one choice point (one candidate op) per searchable layer. SGNAS is not
    supported: its 6 sub-block choice points per layer, once repaired (active sub-blocks first, no
    empty shape-changing layer), no longer map a permuted choice to one weight tensor, so permuting them
    would promise a fairness the layer does not have."""

    name = "fair"

    def __init__(self, reduction: str = "sum") -> None:
        check_choice("fair", "reduction", reduction, _REDUCTIONS)
        self.reduction = reduction

    @classmethod
    def spaces_supported(cls) -> str:
        return ", ".join(single_choice_spaces())

    def check_space(self, space: "SearchSpace") -> None:
        """Checked structurally, so subclasses of a supported space with their own name still work."""
        require_single_choice("fair", space, "permutes one candidate op per layer")

    def paths(self, space: "SearchSpace", rng: random.Random) -> Sequence[Arch]:
        """The paths one step trains (see `fair_paths`)."""
        return fair_paths(space, rng)

    def step(self, ctx: StepContext, x: torch.Tensor, y: torch.Tensor) -> dict[str, Metric]:
        archs = self.paths(ctx.space, ctx.rng)
        scale = 1.0 / len(archs) if self.reduction == "mean" else 1.0
        loss_sum = torch.zeros((), device=x.device)
        acc_sum = torch.zeros((), device=x.device)
        for arch in archs:
            logits = ctx.forward(x, arch)
            loss = ctx.loss(logits, y)
            ctx.backward(loss * scale if scale != 1.0 else loss)
            loss_sum = loss_sum + loss.detach()
            acc_sum = acc_sum + (logits.detach().argmax(1) == y).float().mean()
        n = len(archs)
        return {"loss": loss_sum / n, "acc": acc_sum / n}
