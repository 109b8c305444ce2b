"""The strategy registry, per-step seeding and the uniform strategy."""
from __future__ import annotations

import random

import pytest
import torch

from flexnas import spaces
from flexnas.errors import ConfigError
from flexnas.train import strategies
from flexnas.train.strategies import StepContext, Strategy, step_seed

SEED_7_123 = 805200110940730091


def test_registry_lists_and_builds_uniform():
    assert "uniform" in strategies.names()
    s = strategies.get("uniform")
    assert isinstance(s, Strategy) and s.name == "uniform"


def test_unknown_strategy_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"unknown strategy 'unifrom' \(did you mean 'uniform'\?\); "
                                          r"known strategies: .*uniform"):
        strategies.get("unifrom")


def test_unknown_argument_is_a_config_error():
    with pytest.raises(ConfigError, match="strategy 'uniform' has no argument 'paths'"):
        strategies.get("uniform", paths=4)


def test_register_refuses_a_second_class_under_a_taken_name():
    class Impostor(Strategy):
        name = "uniform"

    with pytest.raises(ConfigError, match="already registered"):
        strategies.register(Impostor)


def test_step_seed_is_pinned():
    """sha256-based, so the same in every process (no PYTHONHASHSEED salt) and every release: a
    checkpoint resumed by a newer flexnas must draw the same archs."""
    assert step_seed(7, 123) == SEED_7_123
    assert 0 <= step_seed(7, 123) < 2**63
    assert len({step_seed(s, t) for s in range(5) for t in range(50)}) == 250


def _ctx(space, net, seed, step, calls):
    return StepContext(model=net, supernet=net, space=space, criterion=torch.nn.CrossEntropyLoss(),
                       rng=random.Random(step_seed(seed, step)), seed=step_seed(seed, step),
                       device=torch.device("cpu"), epoch=0, global_step=step, total_steps=10,
                       backward=lambda loss: (calls.append(loss), loss.backward()),
                       step_optimizer=lambda opt: opt.step())


def test_uniform_trains_the_arch_drawn_from_the_step_seed():
    space = spaces.get("proxyless", input_size=8, num_classes=10, width_mult=0.25)
    net = space.supernet()
    seen = []
    net.register_forward_hook(lambda m, args, out: seen.append(args[1]))
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    calls: list = []
    for step in (0, 0, 1):
        metrics = strategies.get("uniform").step(_ctx(space, net, 5, step, calls), x, y)
        assert set(metrics) == {"loss", "acc"} and 0 <= float(metrics["acc"]) <= 1
    assert seen[0] == seen[1] == space.sample(random.Random(step_seed(5, 0)))
    assert seen[2] != seen[0]
    assert len(calls) == 3
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_context_generator_is_seeded_like_the_step():
    space = spaces.get("proxyless", input_size=8, num_classes=10, width_mult=0.25)
    a = _ctx(space, None, 1, 4, []).generator
    b = _ctx(space, None, 1, 4, []).generator
    assert torch.equal(torch.rand(3, generator=a), torch.rand(3, generator=b))
