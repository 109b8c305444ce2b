"""DSNAS (Hu et al. 2020): architecture and weights trained together on single sampled paths.

Every step samples one op per layer, Z ~ Categorical(softmax(alpha)), and runs that path only, with
the layer's output multiplied by a gate Z_s = 1 (the sampled entry of the one-hot Z). One backward
pass gives the weight gradients and dL/dZ_s; the architecture gradient is DSNAS's credit assignment

    dL/dalpha = dL/dZ_s * grad_alpha log p(Z) = dL/dZ_s * (onehot(s) - softmax(alpha)),

plus the gradient of the FLOPs loss on `CostModel.expected`. The loop then steps the weight and the
logit optimizers in the same step. The gradients are read after the loop's single backward: no
backward call happens inside `forward` (the authors' code calls one there).

Early fixing: once a layer's top-1 probability exceeds its top-2 by `fix_threshold` (0.3 in the
paper), the layer keeps its argmax op and its logits stop moving. When every layer is fixed, the
derived child is all that trains from then on, and the BatchNorm running statistics are reset so the
child's are estimated from its own activations, not from the mixture of paths seen during search.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Optional

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from flexnas.arch import Arch
from flexnas.train.strategies import register
from flexnas.train.strategies._common import (ArchLogits, CostLoss, check_arg, require_single_choice,
                                                single_choice_spaces)
from flexnas.train.strategies.base import Metric, StepContext, Strategy

if TYPE_CHECKING:
    from flexnas.spaces.base import SearchSpace

__all__ = ["DSNAS", "gated"]


@contextmanager
def gated(layers: Sequence[nn.Module], gates: Sequence[torch.Tensor]) -> Iterator[None]:
    """Multiply each layer's path output by its gate for the duration. The supernet calls
    `layer.forward_path` directly (module hooks never fire), so the method is shadowed on the instance
    and restored on exit: the supernet stays untouched, and a DDP wrapper still reaches it."""
    for layer, g in zip(layers, gates):
        method = layer.forward_path
        layer.forward_path = (lambda x, config, f=method, g=g: f(x, config) * g)  # type: ignore[method-assign]
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward_path


def reset_bn_statistics(net: nn.Module) -> int:
    """Reset the running mean/var (and batch counters) of every BatchNorm; returns how many."""
    bns = [m for m in net.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    for m in bns:
        m.reset_running_stats()
    return len(bns)


@register
class DSNAS(Strategy):
    """Arguments: `arch_lr`, `arch_weight_decay` (Adam on the logits), `fix_threshold` (top-1 minus
    top-2 probability that fixes a layer; 1 disables early fixing), `warmup_epochs` (weights only,
    uniform sampling, before the logits move) and the FLOPs loss `cost_loss` (none | target),
    `cost_metric`, `cost_weight`, `cost_target` (weight * max(0, E[cost] / target - 1))."""

    name = "dsnas"
    supported_spaces = None  # structural check: one candidate op per layer

    def __init__(self, arch_lr: float = 0.001, arch_weight_decay: float = 0.0, fix_threshold: float = 0.3,
                 warmup_epochs: int = 0, cost_loss: str = "none", cost_metric: str = "macs",
                 cost_weight: float = 1.0, cost_target: Optional[str] = None) -> None:
        n = self.name
        check_arg(n, "arch_lr", arch_lr, arch_lr > 0, "must be > 0")
        check_arg(n, "arch_weight_decay", arch_weight_decay, arch_weight_decay >= 0, "must be >= 0")
        check_arg(n, "fix_threshold", fix_threshold, 0 < fix_threshold <= 1, "must be in (0, 1]")
        check_arg(n, "warmup_epochs", warmup_epochs, isinstance(warmup_epochs, int) and warmup_epochs >= 0,
                  "must be an integer >= 0")
        self.arch_lr, self.arch_weight_decay = arch_lr, arch_weight_decay
        self.fix_threshold, self.warmup_epochs = float(fix_threshold), warmup_epochs
        self.cost = CostLoss(cost_loss, cost_metric, weight=cost_weight, target=cost_target)
        self.logits: Optional[ArchLogits] = None
        self.optimizer: Optional[torch.optim.Optimizer] = None
        self.fixed: list[int] = []   # per choice point: the fixed op, or -1 while still searched
        self.bn_reset_at: int = -1   # global step at which every layer was fixed and BN was reset

    @classmethod
    def spaces_supported(cls) -> str:
        return ", ".join(single_choice_spaces())

    def check_space(self, space: "SearchSpace") -> None:
        require_single_choice(self.name, space, "gates one sampled op per layer")
        self.cost.validate(self.name, space, kinds=("none", "target"))

    def setup(self, supernet: nn.Module, space: "SearchSpace", device: torch.device) -> None:
        self.logits = ArchLogits(space, device)
        self.optimizer = torch.optim.Adam(self.logits.params, lr=self.arch_lr, betas=(0.5, 0.999),
                                          weight_decay=self.arch_weight_decay)
        # A choice point with one option is decided from the start.
        self.fixed = [0 if len(p.options) == 1 else -1 for p in space.choices]

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.optimizer] if self.optimizer is not None else []

    def sample(self, ctx: StepContext) -> tuple[list[int], list[torch.Tensor]]:
        """(sampled op per choice point, the probabilities it was drawn from), from `ctx.generator`."""
        assert self.logits is not None
        probs = [p.detach() for p in self.logits.probs()]
        ops = []
        for p, f in zip(probs, self.fixed):
            if f >= 0:
                ops.append(f)
            elif ctx.epoch < self.warmup_epochs:
                ops.append(int(torch.randint(len(p), (1,), generator=ctx.generator, device=p.device)))
            else:
                ops.append(int(torch.multinomial(p.float(), 1, generator=ctx.generator)))
        return ops, probs

    def step(self, ctx: StepContext, x: torch.Tensor, y: torch.Tensor) -> dict[str, Metric]:
        assert self.logits is not None
        ops, probs = self.sample(ctx)
        arch = ctx.space.repair(ops)
        gates = [torch.ones((), device=x.device, requires_grad=True) for _ in ops]
        with gated(ctx.supernet.layers, gates):
            logits = ctx.forward(x, arch)
        loss = ctx.loss(logits, y)
        searching = ctx.epoch >= self.warmup_epochs and any(f < 0 for f in self.fixed)
        expected = None
        total = loss
        if searching and self.cost.kind != "none":
            expected = self.cost.expected(ctx.space, self.logits.probs())
            total = loss + self.cost.penalty(expected)
        ctx.backward(total)  # the only backward: weights, dL/dZ_s and the cost term's logit gradient
        metrics: dict[str, Metric] = {"loss": loss.detach(), "acc": (logits.detach().argmax(1) == y).float().mean(),
                                      "fixed": float(sum(f >= 0 for f in self.fixed))}
        if expected is not None:
            metrics[f"expected_{self.cost.metric}"] = expected.detach()
        if not searching:
            for a in self.logits.params:
                a.grad = None
            return metrics
        for a, g, s, p, f in zip(self.logits.params, gates, ops, probs, self.fixed):
            if f >= 0:
                a.grad = None  # fixed layers: the optimizer skips parameters without a gradient
                continue
            score = -p.to(a.dtype)
            score[s] += 1.0  # grad_alpha log softmax(alpha)_s = onehot(s) - softmax(alpha)
            credit = g.grad * score if g.grad is not None else torch.zeros_like(a)
            a.grad = credit if a.grad is None else a.grad + credit
        self.logits.all_reduce_grads()
        return metrics

    def after_step(self, ctx: StepContext) -> None:
        """Early fixing, then the BatchNorm reset once the child is fully derived."""
        assert self.logits is not None
        if ctx.epoch < self.warmup_epochs or all(f >= 0 for f in self.fixed):
            return
        for i, p in enumerate(self.logits.probs()):
            if self.fixed[i] < 0:
                top = torch.topk(p.detach(), 2).values
                if float(top[0] - top[1]) >= self.fix_threshold:
                    self.fixed[i] = int(p.argmax())
        if all(f >= 0 for f in self.fixed):
            reset_bn_statistics(ctx.supernet)
            self.bn_reset_at = ctx.global_step

    def parameters(self) -> list[nn.Parameter]:
        return list(self.logits.params) if self.logits is not None else []

    def derive(self, space: "SearchSpace") -> Optional[Arch]:
        if self.logits is None:
            return None
        return space.repair([f if f >= 0 else int(a.detach().argmax()) for f, a in zip(self.fixed, self.logits.params)])

    def arch_probs(self) -> Optional[list[list[float]]]:
        return self.logits.as_lists() if self.logits is not None else None

    def state_dict(self) -> dict[str, Any]:
        assert self.logits is not None
        return {**super().state_dict(), "logits": self.logits.state_dict(), "fixed": list(self.fixed),
                "bn_reset_at": self.bn_reset_at}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        assert self.logits is not None
        super().load_state_dict(state)
        self.logits.load_state_dict(state["logits"])
        self.fixed = [int(f) for f in state["fixed"]]
        self.bn_reset_at = int(state["bn_reset_at"])
