"""Training one standalone network (from scratch) with the same loop as supernets.

The network is `space.subnet(arch)`: it has no arch argument, so a step simply calls it. The strategy
also owns the two ImageNet-recipe tricks that act on the network rather than the optimizer:
drop-connect on residual branches (rate growing linearly with depth, as EfficientNet) and an
exponential moving average of the weights, which is what the recipe evaluates.
"""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, Optional

import torch
from torch import nn

from flexnas.errors import CheckpointError, ConfigError
from flexnas.train.strategies import register
from flexnas.train.strategies.base import Metric, StepContext, Strategy

if TYPE_CHECKING:
    from flexnas.spaces.base import SearchSpace


def set_drop_connect(net: nn.Module, rate: float) -> int:
    """Give the i-th of n residual blocks (those with a `drop_connect` attribute and a residual)
    the rate `rate * i / n`, i = 1..n. Returns n."""
    blocks = [m for m in net.modules() if hasattr(m, "drop_connect") and getattr(m, "use_residual", False)]
    for i, block in enumerate(blocks, start=1):
        block.drop_connect = rate * i / len(blocks)
    return len(blocks)


class WeightEMA:
    """ema <- decay * ema + (1 - decay) * weights after every step; buffers (BN statistics) are
    copied, as TF's ExponentialMovingAverage over trainable variables leaves them to the model."""

    def __init__(self, net: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(net).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        for ema, p in zip(self.model.parameters(), net.parameters()):
            ema.lerp_(p.detach(), 1.0 - self.decay)
        for ema_b, b in zip(self.model.buffers(), net.buffers()):
            ema_b.copy_(b)


@register
class Standalone(Strategy):
    """One plain network, one forward per step. `ema_decay` in (0, 1) keeps an EMA of the weights
    (0 disables it); `drop_connect` is the deepest residual block's drop rate (0 disables it)."""

    name = "standalone"

    def __init__(self, ema_decay: float = 0.0, drop_connect: float = 0.0) -> None:
        if not 0.0 <= ema_decay < 1.0:
            raise ConfigError(f"train.strategy_args.ema_decay must be in [0, 1) (0 disables the EMA), got {ema_decay}")
        if not 0.0 <= drop_connect < 1.0:
            raise ConfigError(f"train.strategy_args.drop_connect must be in [0, 1), got {drop_connect}")
        self.ema_decay = float(ema_decay)
        self.drop_connect = float(drop_connect)
        self.ema: Optional[WeightEMA] = None
        self._net: Optional[nn.Module] = None

    def setup(self, supernet: nn.Module, space: "SearchSpace", device: torch.device) -> None:
        from flexnas.supernet import Supernet

        if isinstance(supernet, Supernet):
            raise ConfigError("strategy 'standalone' trains one standalone network (`flexnas train`); "
                              "a supernet needs a path-sampling strategy such as 'uniform'")
        self._net = supernet
        if self.drop_connect > 0 and set_drop_connect(supernet, self.drop_connect) == 0:
            raise ConfigError(f"train.strategy_args.drop_connect={self.drop_connect}: this network has no "
                              f"residual blocks to drop; set it to 0")
        if self.ema_decay > 0:
            self.ema = WeightEMA(supernet, self.ema_decay)

    def step(self, ctx: StepContext, x: torch.Tensor, y: torch.Tensor) -> dict[str, Metric]:
        with ctx.autocast():
            logits = ctx.model(x)
        loss = ctx.loss(logits, y)
        ctx.backward(loss)
        acc = (logits.detach().argmax(1) == y).float().mean()
        return {"loss": loss.detach(), "acc": acc}

    def after_step(self, ctx: StepContext) -> None:
        if self.ema is not None:
            self.ema.update(ctx.supernet)

    def eval_model(self) -> nn.Module:
        """The weights to evaluate: the EMA when there is one, else the trained network itself."""
        if self.ema is not None:
            return self.ema.model
        if self._net is None:
            raise RuntimeError("Standalone.eval_model() before setup()")
        return self._net

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.ema is not None:
            state["ema"] = self.ema.model.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if (self.ema is None) != ("ema" not in state):
            raise CheckpointError("the checkpoint's EMA setting differs from train.strategy_args.ema_decay")
        if self.ema is not None:
            self.ema.model.load_state_dict(state["ema"])
