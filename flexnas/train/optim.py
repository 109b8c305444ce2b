"""Optimizer, parameter groups and the per-step learning-rate schedule of supernet training."""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from flexnas.train.trainer import TrainConfig

__all__ = ["param_groups", "build_optimizer", "build_scheduler", "LrSchedule", "RMSpropTF"]

_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups: weights with `weight_decay`, and BN/norm parameters and biases without it.

    Decaying BN scales and biases only shrinks them toward zero without regularising the function,
    which hurts small supernets; every modern recipe exempts them."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            (no_decay if isinstance(module, _NORMS) or name == "bias" else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
              {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]
    return [g for g in groups if g["params"]]


def build_optimizer(params: Iterable[dict[str, Any]] | Iterable[nn.Parameter],
                    cfg: "TrainConfig") -> torch.optim.Optimizer:
    """The optimizer named by `cfg.optimizer` (validated by TrainConfig)."""
    params = list(params)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "rmsprop":
        # alpha=0.9 is the decay TF-era mobile recipes (MnasNet, EfficientNet) use.
        return torch.optim.RMSprop(params, lr=cfg.lr, alpha=0.9, momentum=cfg.momentum,
                                   weight_decay=cfg.weight_decay)
    if cfg.optimizer == "rmsprop_tf":
        return RMSpropTF(params, lr=cfg.lr, alpha=0.9, eps=1e-3, momentum=cfg.momentum,
                         weight_decay=cfg.weight_decay)
    raise AssertionError(f"unvalidated optimizer {cfg.optimizer!r}")  # TrainConfig rejects it first


class RMSpropTF(torch.optim.Optimizer):
    """RMSprop as TensorFlow 1 computes it, which the MnasNet / EfficientNet / ProxylessNAS ImageNet
    hyper-parameters (eps=1e-3, alpha=0.9, momentum=0.9) were tuned for:

        ms  <- alpha * ms + (1 - alpha) * g^2          (ms starts at 1, not 0)
        mom <- momentum * mom + lr * g / sqrt(ms + eps)
        w   <- w - mom

    torch's RMSprop puts eps outside the root, starts ms at 0 and keeps lr out of the momentum
    buffer; with eps=1e-3 outside the root the steps are far smaller. Weight decay is L2 added to the
    gradient, as TF recipes add it to the loss."""

    def __init__(self, params: Any, lr: float = 0.016, alpha: float = 0.9, eps: float = 1e-3,
                 momentum: float = 0.9, weight_decay: float = 0.0) -> None:
        if lr <= 0 or not 0 <= alpha < 1 or eps <= 0 or not 0 <= momentum < 1 or weight_decay < 0:
            raise ValueError(f"invalid RMSpropTF settings lr={lr} alpha={alpha} eps={eps} "
                             f"momentum={momentum} weight_decay={weight_decay}")
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if group["weight_decay"]:
                    grad = grad.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                if not state:
                    state["square_avg"] = torch.ones_like(p)
                    state["momentum_buffer"] = torch.zeros_like(p)
                ms = state["square_avg"]
                ms.mul_(group["alpha"]).addcmul_(grad, grad, value=1 - group["alpha"])
                step = grad / ms.add(group["eps"]).sqrt_()
                buf = state["momentum_buffer"]
                buf.mul_(group["momentum"]).add_(step, alpha=group["lr"])
                p.sub_(buf)
        return loss


@dataclass
class LrSchedule:
    """Multiplier of the base lr at optimizer step `step` (0-based), evaluated every step.

    Warmup ramps linearly, (step + 1) / warmup_steps, so the first step already moves the weights.
    Cosine decays from 1 to 0 over the steps after warmup; `step` multiplies by gamma every
    `step_size` epochs; `constant` keeps 1. A plain dataclass so LambdaLR can checkpoint it."""

    schedule: str
    total_steps: int
    steps_per_epoch: int
    warmup_steps: int = 0
    step_size: int = 30
    gamma: float = 0.1

    def __call__(self, step: int) -> float:
        warm = min(1.0, (step + 1) / self.warmup_steps) if step < self.warmup_steps else 1.0
        if self.schedule == "constant":
            base = 1.0
        elif self.schedule == "step":
            base = self.gamma ** ((step // max(1, self.steps_per_epoch)) // self.step_size)
        else:
            span = max(1, self.total_steps - self.warmup_steps)
            progress = min(1.0, max(0, step - self.warmup_steps) / span)
            base = 0.5 * (1.0 + math.cos(math.pi * progress))
        return warm * base


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: "TrainConfig",
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step LambdaLR (call `.step()` after every optimizer step)."""
    schedule = LrSchedule(cfg.schedule, total_steps=cfg.epochs * steps_per_epoch,
                          steps_per_epoch=steps_per_epoch,
                          warmup_steps=int(round(cfg.warmup_epochs * steps_per_epoch)),
                          step_size=cfg.step_size, gamma=cfg.gamma)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
