"""Uniform single-path sampling (SPOS, Guo et al. 2020): one uniformly sampled arch per step."""
from __future__ import annotations

import torch

from flexnas.train.strategies import register
from flexnas.train.strategies.base import Metric, StepContext, Strategy


@register
class Uniform(Strategy):
    """Every step trains one path drawn by `space.sample(ctx.rng)`; `ctx.rng` is seeded from
    (seed, global step), so all ranks train the same path and a resumed run draws the same paths."""

    name = "uniform"

    def step(self, ctx: StepContext, x: torch.Tensor, y: torch.Tensor) -> dict[str, Metric]:
        arch = ctx.space.sample(ctx.rng)
        logits = ctx.forward(x, arch)
        loss = ctx.loss(logits, y)
        ctx.backward(loss)
        acc = (logits.detach().argmax(1) == y).float().mean()
        return {"loss": loss.detach(), "acc": acc}
