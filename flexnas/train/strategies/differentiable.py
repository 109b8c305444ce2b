"""Differentiable architecture search over the supernet's mixture (DARTS, first order; FBNet's
Gumbel-softmax DNAS).

One logit vector per choice point. Every step alternates, as DARTS does:
  1. architecture step: the next search-validation batch runs through the mixture weighted by the
     current distribution; the logits (only they: the supernet weights are frozen for this pass) get
     the gradient of the architecture loss, CE combined with the hardware term on
     `CostModel.expected`, and their optimizer steps at once;
  2. weight step: the training batch runs through the mixture of the updated distribution, detached,
     and the supernet weights get the CE gradient (the trainer loop clips and steps them).
`mixture="softmax"` weighs ops by softmax(logits) (DARTS); `"gumbel"` by a Gumbel-softmax sample with
temperature annealed exponentially from `tau_start` to `tau_end` over training (FBNet: 5.0, decayed
by exp(-0.045) per epoch). The arch with the most likely op at every choice point is written to the
run folder's `derived.json` when training ends.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from flexnas.arch import Arch
from flexnas.train.strategies import register
from flexnas.train.strategies._common import ArchLogits, CostLoss, check_arg, check_choice
from flexnas.train.strategies.base import Metric, StepContext, Strategy

if TYPE_CHECKING:
    from flexnas.spaces.base import SearchSpace

__all__ = ["Differentiable", "gumbel_softmax", "temperature"]

MIXTURES = ("softmax", "gumbel")


def temperature(progress: float, start: float, end: float) -> float:
    """Exponential annealing: `start` at progress 0, `end` at progress 1."""
    return start * (end / start) ** progress


def gumbel_softmax(logits: torch.Tensor, tau: float, generator: torch.Generator) -> torch.Tensor:
    """softmax((logits + g) / tau) with g ~ Gumbel(0, 1) drawn from `generator` (so every rank and a
    resumed run draw the same sample; torch's own gumbel_softmax takes no generator)."""
    u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
    g = -torch.log((-torch.log(u.clamp_min(1e-20))).clamp_min(1e-20))
    return F.softmax((logits + g) / tau, dim=-1)


@contextmanager
def frozen(net: nn.Module) -> Iterator[None]:
    """Weights that need no gradient for the duration (the architecture pass computes none for them)."""
    params = [p for p in net.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


@register
class Differentiable(Strategy):
    """Bi-level differentiable search. Arguments: `mixture` (softmax | gumbel), `tau_start`, `tau_end`,
    `arch_lr`, `arch_weight_decay` (Adam on the logits; FBNet: 0.01 and 5e-4), `warmup_epochs`
    (weights-only epochs before the logits move), and the hardware loss: `cost_loss` (none | fbnet |
    target), `cost_metric` (macs | params), `cost_alpha`, `cost_beta`, `cost_unit` (fbnet:
    CE * alpha * log(E[cost] / unit) ** beta) and `cost_weight`, `cost_target` (target:
    CE + weight * max(0, E[cost] / target - 1), e.g. cost_target: 'macs<=1M')."""

    name = "differentiable"
    supported_spaces = frozenset({"proxyless", "mobilenetv2", "fbnet", "spos", "sgnas", "nb201", "nag"})
    needs_val = True

    def __init__(self, mixture: str = "gumbel", tau_start: float = 5.0, tau_end: float = 0.1,
                 arch_lr: float = 0.01, arch_weight_decay: float = 5e-4, warmup_epochs: int = 0,
                 cost_loss: str = "none", cost_metric: str = "macs", cost_alpha: float = 0.2,
                 cost_beta: float = 0.6, cost_unit: float = 1e6, cost_weight: float = 1.0,
                 cost_target: Optional[str] = None) -> None:
        n = self.name
        check_choice(n, "mixture", mixture, MIXTURES)
        check_arg(n, "tau_start", tau_start, tau_start > 0, "must be > 0")
        check_arg(n, "tau_end", tau_end, 0 < tau_end, "must be > 0")
        check_arg(n, "arch_lr", arch_lr, arch_lr > 0, "must be > 0")
        check_arg(n, "arch_weight_decay", arch_weight_decay, arch_weight_decay >= 0, "must be >= 0")
        check_arg(n, "warmup_epochs", warmup_epochs, isinstance(warmup_epochs, int) and warmup_epochs >= 0,
                  "must be an integer >= 0")
        self.mixture, self.tau_start, self.tau_end = mixture, float(tau_start), float(tau_end)
        self.arch_lr, self.arch_weight_decay, self.warmup_epochs = arch_lr, arch_weight_decay, warmup_epochs
        self.cost = CostLoss(cost_loss, cost_metric, cost_alpha, cost_beta, cost_unit, cost_weight, cost_target)
        self.logits: Optional[ArchLogits] = None
        self.arch_optimizer: Optional[torch.optim.Optimizer] = None

    def check_space(self, space: "SearchSpace") -> None:
        super().check_space(space)
        self.cost.validate(self.name, space)

    def setup(self, supernet: nn.Module, space: "SearchSpace", device: torch.device) -> None:
        self.logits = ArchLogits(space, device)
        # Adam with DARTS's betas: the logits' gradient is noisy and its scale varies by layer.
        self.arch_optimizer = torch.optim.Adam(self.logits.params, lr=self.arch_lr, betas=(0.5, 0.999),
                                               weight_decay=self.arch_weight_decay)

    def _mixture(self, ctx: StepContext) -> list[torch.Tensor]:
        assert self.logits is not None
        if self.mixture == "softmax":
            return self.logits.probs()
        tau = temperature(ctx.progress, self.tau_start, self.tau_end)
        return [gumbel_softmax(a, tau, ctx.generator) for a in self.logits.params]

    def step(self, ctx: StepContext, x: torch.Tensor, y: torch.Tensor) -> dict[str, Metric]:
        assert self.logits is not None and self.arch_optimizer is not None
        metrics: dict[str, Metric] = {}
        if ctx.epoch >= self.warmup_epochs:
            xv, yv = ctx.val_batch()
            probs = self._mixture(ctx)
            # The bare supernet (not the DDP wrapper): this pass touches no weight gradient.
            with frozen(ctx.supernet), ctx.autocast():
                logits_v = ctx.supernet(xv, probs)
            ce_v = ctx.loss(logits_v, yv)
            expected = self.cost.expected(ctx.space, self.logits.probs()) if self.cost.kind != "none" else None
            arch_loss = self.cost.combine(ce_v, expected)
            ctx.backward(arch_loss)
            self.logits.all_reduce_grads()
            ctx.step_optimizer(self.arch_optimizer)
            self.arch_optimizer.zero_grad(set_to_none=True)
            metrics.update({"arch_loss": arch_loss.detach(), "val_loss": ce_v.detach(),
                            "val_acc": (logits_v.detach().argmax(1) == yv).float().mean()})
            if expected is not None:
                metrics[f"expected_{self.cost.metric}"] = expected.detach()
        with torch.no_grad():
            probs = [p.detach() for p in self._mixture(ctx)]
        logits = ctx.forward(x, probs)
        loss = ctx.loss(logits, y)
        ctx.backward(loss)
        metrics.update({"loss": loss.detach(), "acc": (logits.detach().argmax(1) == y).float().mean()})
        if self.mixture == "gumbel":
            metrics["tau"] = temperature(ctx.progress, self.tau_start, self.tau_end)
        return metrics

    def parameters(self) -> list[nn.Parameter]:
        return list(self.logits.params) if self.logits is not None else []

    def derive(self, space: "SearchSpace") -> Optional[Arch]:
        return self.logits.argmax(space) if self.logits is not None else None

    def arch_probs(self) -> Optional[list[list[float]]]:
        return self.logits.as_lists() if self.logits is not None else None

    # The architecture optimizer steps inside `step` (alternation), so it is not in `optimizers()`
    # for the loop to step again; its state is saved here instead.
    def state_dict(self) -> dict[str, Any]:
        assert self.logits is not None and self.arch_optimizer is not None
        return {**super().state_dict(), "logits": self.logits.state_dict(),
                "arch_optimizer": self.arch_optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        assert self.logits is not None and self.arch_optimizer is not None
        super().load_state_dict(state)
        self.logits.load_state_dict(state["logits"])
        self.arch_optimizer.load_state_dict(state["arch_optimizer"])
