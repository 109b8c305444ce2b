"""The training-strategy interface: which path(s) a step trains and how their losses combine.

The trainer loop is one; a strategy only fills in the middle of a step. The loop zeroes gradients,
calls `strategy.step(ctx, x, y)` (which runs forwards through `ctx.forward` and accumulates gradients
through `ctx.backward`), then unscales, clips and steps the weight optimizer and every optimizer the
strategy owns (`strategy.optimizers()`), and steps the lr scheduler. AMP, gradient scaling and
DistributedDataParallel therefore never leak into a strategy.
"""
from __future__ import annotations

import hashlib
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Optional, Union

import torch
from torch import nn

from flexnas.arch import Arch
from flexnas.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    from flexnas.spaces.base import SearchSpace
    from flexnas.supernet import Supernet

__all__ = ["Strategy", "StepContext", "step_seed"]

Metric = Union[float, torch.Tensor]


def step_seed(seed: int, global_step: int) -> int:
    """A 63-bit seed for one training step, stable across processes, Python versions and machines.

    Every rank derives the same seed for a step, so every rank trains the same arch without any
    communication; and a resumed run re-derives it from the step counter, so resume is exact.
    (Python's `hash` is salted per process for strings, hence sha256.)"""
    digest = hashlib.sha256(f"flexnas-step:{int(seed)}:{int(global_step)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


@dataclass
class StepContext:
    """Everything a strategy may use during one step. Built by the trainer, fresh every step."""

    model: Callable[..., torch.Tensor]  # the supernet, possibly wrapped (DDP): call it for training forwards
    supernet: "Supernet"                  # the bare supernet: for `extract`, parameters, attributes
    space: "SearchSpace"
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    rng: random.Random                    # seeded from (seed, global_step): same on every rank
    seed: int                             # step_seed(seed, global_step), to build further generators
    device: torch.device
    epoch: int
    global_step: int
    total_steps: int
    backward: Callable[[torch.Tensor], None]
    step_optimizer: Callable[[torch.optim.Optimizer], None]
    autocast: Callable[[], AbstractContextManager[Any]] = nullcontext
    # The next batch of the search-validation split, on the device (None: the trainer has none).
    val_source: Optional[Callable[[], tuple[torch.Tensor, torch.Tensor]]] = None
    _generator: Optional[torch.Generator] = field(default=None, repr=False)

    @property
    def generator(self) -> torch.Generator:
        """A torch.Generator on the training device, seeded like `rng` (built on first use)."""
        if self._generator is None:
            self._generator = torch.Generator(device=self.device).manual_seed(self.seed)
        return self._generator

    @property
    def progress(self) -> float:
        """Fraction of training done before this step, in [0, 1): for annealed temperatures etc."""
        return self.global_step / max(1, self.total_steps)

    def val_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next (x, y) batch of the search-validation split (bi-level strategies train their
        architecture parameters on it); the trainer keeps and checkpoints the position."""
        if self.val_source is None:
            raise ConfigError("this strategy needs search-validation batches, but the trainer was built "
                              "without val_batches")
        return self.val_source()

    def forward(self, x: torch.Tensor, arch: Union[Arch, Sequence[torch.Tensor]]) -> torch.Tensor:
        """Logits of one path (`Arch`) or of the mixture (`probs`), under the loop's autocast."""
        with self.autocast():
            return self.model(x, arch)

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The configured criterion, computed in float32 even when the forward ran in fp16."""
        return self.criterion(logits.float(), y)


class Strategy(ABC):
    """Base class of training strategies. Subclasses set `name` and implement `step`.

    Strategies that set `needs_val` get search-validation batches through `ctx.val_batch()`; those
    that pick an architecture themselves (differentiable, DSNAS) return it from `derive`, and the
    trainer writes it to `derived.json` in the run folder when training ends.

    Hooks, all optional: `check_space` (refuse spaces the method cannot train), `setup` (build extra
    parameters such as architecture logits, and their optimizers, once the supernet is on its device),
    `optimizers` (the loop zeroes and steps these along with the weight optimizer, through the AMP
    scaler; gradient clipping applies to supernet weights only),
    `after_step` (anything to do once the optimizers stepped), `state_dict`/`load_state_dict`
    (checkpointed with the run; values must be tensors, numbers, strings, lists or dicts)."""

    name: ClassVar[str] = ""
    supported_spaces: ClassVar[Optional[frozenset[str]]] = None
    needs_val: ClassVar[bool] = False

    @classmethod
    def spaces_supported(cls) -> str:
        """The spaces it trains, in words (for `flexnas strategies` and error messages)."""
        return ", ".join(sorted(cls.supported_spaces)) if cls.supported_spaces is not None else "every space"

    def check_space(self, space: "SearchSpace") -> None:
        """Raise ConfigError when this strategy cannot train `space`."""
        if self.supported_spaces is not None and space.name not in self.supported_spaces:
            raise ConfigError(f"strategy '{self.name}' does not support space '{space.name}'; "
                              f"it supports: {', '.join(sorted(self.supported_spaces))}")

    def setup(self, supernet: "Supernet", space: "SearchSpace", device: torch.device) -> None:
        """Called once before training (and before a checkpoint is restored)."""

    @abstractmethod
    def step(self, ctx: StepContext, x: torch.Tensor, y: torch.Tensor) -> dict[str, Metric]:
        """Run forward/backward for one batch and return metrics to log (floats or 0-dim tensors,
        detached). Must call `ctx.backward` at least once; must not zero or step optimizers it does
        not own through `ctx.step_optimizer`."""

    def optimizers(self) -> list[torch.optim.Optimizer]:
        """Optimizers of parameters this strategy owns; the loop steps them after every `step`."""
        return []

    def parameters(self) -> list[nn.Parameter]:
        """Parameters this strategy owns (e.g. architecture logits), for inspection and logging."""
        return []

    def after_step(self, ctx: StepContext) -> None:
        """Called after the optimizers stepped, before the scheduler and the checkpoint."""

    def derive(self, space: "SearchSpace") -> Optional[Arch]:
        """The architecture this strategy selects by itself (e.g. the argmax of its logits), or None
        for strategies that leave the choice to a later search."""
        return None

    def arch_probs(self) -> Optional[list[list[float]]]:
        """Per choice point, the probabilities behind `derive` (for derived.json), or None."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume bit-for-bit; the base class also saves `optimizers()`."""
        return {"optimizers": [opt.state_dict() for opt in self.optimizers()]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        opts = self.optimizers()
        saved = state.get("optimizers", [])
        if len(saved) != len(opts):
            raise CheckpointError(f"strategy '{self.name}': checkpoint holds {len(saved)} optimizer states, "
                              f"this strategy has {len(opts)}")
        for opt, s in zip(opts, saved):
            opt.load_state_dict(s)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
