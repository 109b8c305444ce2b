"""The sandwich rule with in-place distillation (BigNAS, Yu et al. 2020; Slimmable/US-Nets before it),
optionally with attentive sampling (AttentiveNAS, Wang et al. 2021).

Each step trains the largest subnet (by MACs) on the labels with the configured criterion (label-
smoothed cross-entropy), then the smallest subnet and `num_random` random subnets on the largest's
soft predictions, detached: the teacher is the supernet itself, updated on the same step, and gets no
gradient from its students. All losses are backpropagated separately (one graph alive at a time) and
their gradients accumulate, so the loop's single clipped step follows
    CE(largest, y) + sum over students of distill(student, softmax(largest)).
Needs weight-entangled subnets (`weight_sharing: entangled`, SGNAS, the elastic spaces), where the
smallest and largest subnets share weights, so the small ones learn from a teacher whose features
they contain.
"""
from __future__ import annotations

import random
from typing import TYPE_CHECKING, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from flexnas.arch import Arch
from flexnas.errors import ConfigError, did_you_mean
from flexnas.train.strategies import register
from flexnas.train.strategies.base import Metric, StepContext, Strategy

if TYPE_CHECKING:
    from flexnas.spaces.base import SearchSpace

__all__ = ["Sandwich", "distill_loss"]

_DISTILL = ("kl", "soft_ce")
_ATTENTIVE = ("bestup", "worstup")
_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
# Spaces whose subnets are nested slices of one set of weights by construction.
_SHARED_SPACES = ("sgnas", "bignas", "ofa")


def distill_loss(student: torch.Tensor, teacher_probs: torch.Tensor, kind: str = "kl") -> torch.Tensor:
    """Mean over the batch of KL(teacher || student) (`"kl"`) or of the soft-target cross-entropy
    (`"soft_ce"`, KL plus the teacher's entropy, a constant for the student: same gradients).
    `teacher_probs` must already be detached; computed in float32."""
    log_p = F.log_softmax(student.float(), dim=1)
    if kind == "kl":
        return F.kl_div(log_p, teacher_probs, reduction="batchmean")
    return -(teacher_probs * log_p).sum(1).mean()


class _NoDropout:
    """Dropout modules in eval mode and drop-connect rates at 0 for the duration (BigNAS regularises
    only the largest subnet)."""

    def __init__(self, net: nn.Module) -> None:
        self.modules = [m for m in net.modules() if isinstance(m, _DROPOUT) and m.training]
        self.rates = [(m, m.drop_connect) for m in net.modules() if getattr(m, "drop_connect", 0.0)]

    def __enter__(self) -> None:
        for m in self.modules:
            m.train(False)
        for m, _ in self.rates:
            m.drop_connect = 0.0

    def __exit__(self, *exc: object) -> None:
        for m in self.modules:
            m.train(True)
        for m, rate in self.rates:
            m.drop_connect = rate


def _entangled_spaces() -> str:
    from flexnas import spaces

    known = spaces.names()
    parts = [f"{n} (with weight_sharing: entangled)" for n in ("proxyless", "mobilenetv2") if n in known]
    return ", ".join(parts + [n for n in known if n in _SHARED_SPACES])


@register
class Sandwich(Strategy):
    """Sandwich rule + in-place distillation.

    `num_random`: random subnets per step besides the smallest. `distill`: `"kl"` or `"soft_ce"`.
    `attentive`: None, `"bestup"` or `"worstup"`: each random subnet is the lowest- (bestup) or highest-
    (worstup) loss of `candidates` FLOPs-matched archs, scored on this batch without gradients."""

    name = "sandwich"

    def __init__(self, num_random: int = 2, distill: str = "kl", attentive: Optional[str] = None,
                 candidates: int = 3) -> None:
        if isinstance(num_random, bool) or not isinstance(num_random, int) or num_random < 0:
            raise ConfigError(f"strategy 'sandwich': num_random must be an integer >= 0, got {num_random!r}")
        if distill not in _DISTILL:
            raise ConfigError(f"strategy 'sandwich': unknown distill '{distill}'"
                              f"{did_you_mean(str(distill), _DISTILL)}; allowed: {', '.join(_DISTILL)}")
        if attentive is not None and attentive not in _ATTENTIVE:
            raise ConfigError(f"strategy 'sandwich': unknown attentive '{attentive}'"
                              f"{did_you_mean(str(attentive), _ATTENTIVE)}; allowed: {', '.join(_ATTENTIVE)} "
                              f"or null (uniform sampling)")
        if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
            raise ConfigError(f"strategy 'sandwich': candidates must be an integer >= 1, got {candidates!r}")
        self.num_random = num_random
        self.distill = distill
        self.attentive = attentive
        self.candidates = candidates
        self._space: Optional["SearchSpace"] = None
        self._extremes: Optional[tuple[Arch, Arch]] = None

    def extremes(self, space: "SearchSpace") -> tuple[Arch, Arch]:
        """(largest, smallest) arch by MACs, computed once per space."""
        if self._space is not space or self._extremes is None:
            self._space, self._extremes = space, (space.largest("macs"), space.smallest("macs"))
        return self._extremes

    @classmethod
    def spaces_supported(cls) -> str:
        return _entangled_spaces()

    def check_space(self, space: "SearchSpace") -> None:
        """The sandwich rule bounds every subnet between a smallest and a largest one that contain it;
        with independent candidates the smallest and largest share no searchable weights, so the
        students would distil into weights the teacher never uses."""
        if getattr(space, "weight_sharing", None) == "independent":
            raise ConfigError(f"strategy 'sandwich' needs subnets that share the largest subnet's weights, but "
                              f"space '{space.name}' has independent candidates (set "
                              f"space.options.weight_sharing=entangled); it supports: {_entangled_spaces()}")

    def setup(self, supernet: nn.Module, space: "SearchSpace", device: torch.device) -> None:
        self.extremes(space)

    # ---- sampling ---------------------------------------------------------------------------------
    def _matched_pool(self, space: "SearchSpace", rng: random.Random) -> list[Arch]:
        """`candidates` archs of about the same MACs: a target drawn from the uniform-sampling MACs
        distribution (the MACs of one random arch), and the `candidates` archs closest to it among
        8 x `candidates` uniform samples (the target's own arch included)."""
        pool = [space.sample(rng) for _ in range(8 * self.candidates)]
        macs = space.cost_model().costs(pool)["macs"]
        target = float(macs[0])
        order = sorted(range(len(pool)), key=lambda i: (abs(float(macs[i]) - target), i))
        return [pool[i] for i in order[: self.candidates]]

    def _pick(self, ctx: StepContext, x: torch.Tensor, y: torch.Tensor, pool: list[Arch]) -> Arch:
        """The best- or worst-loss arch of `pool` on this batch, by the training criterion on the labels
        (AttentiveNAS's minibatch-loss estimator). Scored without gradients and with
        the BatchNorm running statistics restored afterwards, so scoring leaves no trace; under DDP the
        scores are averaged over ranks so every rank picks the same arch."""
        if len(pool) == 1:
            return pool[0]
        net = ctx.supernet
        saved = [b.detach().clone() for b in net.buffers()]
        scores = []
        with torch.no_grad(), _NoDropout(net):
            for arch in pool:
                with ctx.autocast():
                    logits = net(x, arch)
                scores.append(ctx.loss(logits, y))
            for b, s in zip(net.buffers(), saved):
                b.copy_(s)
        score = torch.stack(scores)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(score)
        idx = int(score.argmin() if self.attentive == "bestup" else score.argmax())
        return pool[idx]

    # ---- the step ---------------------------------------------------------------------------------
    def step(self, ctx: StepContext, x: torch.Tensor, y: torch.Tensor) -> dict[str, Metric]:
        largest, smallest = self.extremes(ctx.space)
        logits = ctx.forward(x, largest)
        teacher_loss = ctx.loss(logits, y)
        ctx.backward(teacher_loss)
        soft = F.softmax(logits.detach().float(), dim=1)
        acc = (logits.detach().argmax(1) == y).float().mean()
        del logits

        student_losses = []
        acc_min = torch.zeros((), device=x.device)
        with _NoDropout(ctx.supernet):
            for i in range(1 + self.num_random):
                if i == 0:
                    arch = smallest
                elif self.attentive is None:
                    arch = ctx.space.sample(ctx.rng)
                else:
                    arch = self._pick(ctx, x, y, self._matched_pool(ctx.space, ctx.rng))
                student = ctx.forward(x, arch)
                loss = distill_loss(student, soft, self.distill)
                ctx.backward(loss)
                student_losses.append(loss.detach())
                if i == 0:
                    acc_min = (student.detach().argmax(1) == y).float().mean()
        kd = torch.stack(student_losses)
        return {"loss": teacher_loss.detach() + kd.sum(), "loss_max": teacher_loss.detach(),
                "distill": kd.mean(), "acc": acc, "acc_min": acc_min}
