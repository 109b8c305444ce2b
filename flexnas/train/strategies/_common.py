"""Pieces shared by the strategies that learn an architecture distribution (differentiable, DSNAS)
or that need one candidate op per layer (fair, DSNAS). Not a strategy: the registry skips `_` modules.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from flexnas.arch import Arch
from flexnas.errors import ConfigError, ConstraintError, FlexnasError, did_you_mean

if TYPE_CHECKING:
    from flexnas.spaces.base import SearchSpace

COST_LOSSES = ("none", "fbnet", "target")


def single_choice_spaces() -> list[str]:
    """Registered spaces whose every searchable layer is one choice point (one candidate op)."""
    from flexnas import spaces

    out = []
    for name in spaces.names():
        try:
            space = spaces.get(name)
        except (FlexnasError, TypeError):
            continue
        if all(len(layer.points) == 1 for layer in space.layers):
            out.append(name)
    return out


def require_single_choice(strategy: str, space: "SearchSpace", why: str) -> None:
    """ConfigError unless every layer of `space` is one choice point; names the spaces that are."""
    if any(len(layer.points) != 1 for layer in space.layers):
        raise ConfigError(f"strategy '{strategy}' {why}, but space '{space.name}' has several choice points "
                          f"per layer; it supports: {', '.join(single_choice_spaces())}")


def check_arg(strategy: str, key: str, value: Any, ok: bool, why: str) -> None:
    if not ok:
        raise ConfigError(f"strategy '{strategy}': {key} {why}, got {value!r}")


def check_choice(strategy: str, key: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ConfigError(f"strategy '{strategy}': unknown {key} '{value}'{did_you_mean(str(value), allowed)}; "
                          f"allowed: {', '.join(allowed)}")


class ArchLogits:
    """One logit vector per choice point (`space.choices` order), initialised to zero (uniform)."""

    def __init__(self, space: "SearchSpace", device: torch.device) -> None:
        self.params = [nn.Parameter(torch.zeros(len(p.options), device=device)) for p in space.choices]

    def probs(self) -> list[torch.Tensor]:
        return [F.softmax(a, dim=-1) for a in self.params]

    def argmax(self, space: "SearchSpace") -> Arch:
        return space.repair([int(a.detach().argmax()) for a in self.params])

    def as_lists(self) -> list[list[float]]:
        return [[round(float(v), 6) for v in p.detach().cpu()] for p in self.probs()]

    def all_reduce_grads(self) -> None:
        """Average the logits' gradients over ranks: each rank saw its own data, and every rank must
        keep identical logits (so every rank samples and derives the same arch)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            for a in self.params:
                if a.grad is not None:
                    dist.all_reduce(a.grad)
                    a.grad /= dist.get_world_size()

    def state_dict(self) -> list[torch.Tensor]:
        return [a.detach().cpu().clone() for a in self.params]

    def load_state_dict(self, saved: Sequence[torch.Tensor]) -> None:
        if len(saved) != len(self.params) or any(s.shape != a.shape for s, a in zip(saved, self.params)):
            raise ConfigError("the checkpoint's architecture logits do not fit this space")
        with torch.no_grad():
            for a, s in zip(self.params, saved):
                a.copy_(s)


@dataclass
class CostLoss:
    """The hardware term on `CostModel.expected` (E[cost] under the architecture distribution).

    `fbnet`: FBNet's multiplicative loss CE * alpha * log(E[cost] / unit) ** beta (alpha 0.2, beta 0.6
    in the paper, with latency in ms; `unit` puts the metric in a scale where log(cost) > 0).
    `target`: CE + weight * max(0, E[cost] / target - 1), a penalty only while above the target.
    `none`: CE alone."""

    kind: str = "none"
    metric: str = "macs"
    alpha: float = 0.2
    beta: float = 0.6
    unit: float = 1e6
    weight: float = 1.0
    target: Optional[str] = None

    def validate(self, strategy: str, space: "SearchSpace", kinds: Sequence[str] = COST_LOSSES) -> None:
        check_choice(strategy, "cost_loss", self.kind, kinds)
        if self.kind == "none":
            return
        model = space.cost_model()
        check_choice(strategy, "cost_metric", self.metric, model.metrics)
        lo, hi = model.range(self.metric)
        if self.kind == "fbnet":
            check_arg(strategy, "cost_alpha", self.alpha, self.alpha > 0, "must be > 0")
            check_arg(strategy, "cost_beta", self.beta, self.beta > 0, "must be > 0")
            check_arg(strategy, "cost_unit", self.unit, self.unit > 0, "must be > 0")
            if lo / self.unit <= 1.0:
                raise ConfigError(f"strategy '{strategy}': cost_unit={self.unit:g} puts the smallest arch's "
                                  f"{self.metric} ({lo:.4g}) at {lo / self.unit:.3g} <= 1, where log(cost) is not "
                                  f"positive; use cost_unit < {lo:.4g} (e.g. {10 ** math.floor(math.log10(lo) - 1):g})")
        else:
            check_arg(strategy, "cost_weight", self.weight, self.weight >= 0, "must be >= 0")
            if self.target is None:
                raise ConfigError(f"strategy '{strategy}': cost_loss 'target' needs cost_target, e.g. "
                                  f"'{self.metric}<={hi * 0.8 / 1e6:.3g}M' (the space spans "
                                  f"{lo / 1e6:.4g}M..{hi / 1e6:.4g}M {self.metric})")
            from flexnas.search.constraints import Constraint, check_feasible

            self.bound()
            try:
                check_feasible(Constraint.parse(self.target), model)
            except ConstraintError as exc:
                raise ConstraintError(f"strategy '{strategy}': cost_{exc}") from None

    def bound(self) -> float:
        from flexnas.search.constraints import Constraint

        if not isinstance(self.target, str):
            raise ConstraintError(f"cost_target must be a constraint string such as '{self.metric}<=300M', "
                                  f"got {self.target!r}")
        c = Constraint.parse(self.target)
        if c.high is None or c.metric != self.metric:
            raise ConstraintError(f"cost_target {self.target!r} must be an upper bound on cost_metric "
                                  f"'{self.metric}', e.g. '{self.metric}<=300M'")
        return float(c.high)

    def expected(self, space: "SearchSpace", probs: Sequence[torch.Tensor]) -> torch.Tensor:
        return space.cost_model().expected(probs)[self.metric]

    def combine(self, ce: torch.Tensor, expected: Optional[torch.Tensor]) -> torch.Tensor:
        """The architecture loss from the task loss and E[cost] (float32)."""
        if self.kind == "none" or expected is None:
            return ce
        if self.kind == "fbnet":
            return ce * self.alpha * torch.log(expected / self.unit) ** self.beta
        return ce + self.penalty(expected)

    def penalty(self, expected: torch.Tensor) -> torch.Tensor:
        return self.weight * F.relu(expected / self.bound() - 1.0)
