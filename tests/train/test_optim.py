"""Parameter groups, optimizers, the lr schedule and config validation."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from flexnas import spaces
from flexnas.errors import ConfigError
from flexnas.train import TrainConfig, build_optimizer, build_scheduler, param_groups


def test_no_weight_decay_on_norm_and_bias_params():
    space = spaces.get("proxyless", input_size=8, num_classes=10, width_mult=0.25)
    net = space.supernet()
    groups = {g["name"]: g for g in param_groups(net, 4e-5)}
    decay = {id(p) for p in groups["decay"]["params"]}
    no_decay = {id(p) for p in groups["no_decay"]["params"]}
    assert groups["decay"]["weight_decay"] == 4e-5 and groups["no_decay"]["weight_decay"] == 0.0
    assert decay.isdisjoint(no_decay) and len(decay | no_decay) == len(list(net.parameters()))
    n_bn = 0
    for module in net.modules():
        for name, p in module.named_parameters(recurse=False):
            if isinstance(module, nn.BatchNorm2d) or name == "bias":
                assert id(p) in no_decay, (module, name)
                n_bn += isinstance(module, nn.BatchNorm2d)
            else:
                assert id(p) in decay, (module, name)
    assert n_bn > 0
    assert any(isinstance(m, nn.Linear) and m.bias is not None and id(m.bias) in no_decay for m in net.modules())


def test_weight_decay_really_skips_bn():
    net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(1.0)
    opt = build_optimizer(param_groups(net, 0.5), TrainConfig(lr=0.1, momentum=0.0, nesterov=False))
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert torch.allclose(net[0].weight, torch.full_like(net[0].weight, 0.95))
    for p in (net[0].bias, net[1].weight, net[1].bias):
        assert torch.equal(p, torch.ones_like(p))


@pytest.mark.parametrize("name, cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam),
                                       ("rmsprop", torch.optim.RMSprop)])
def test_optimizer_choice(name, cls):
    opt = build_optimizer([nn.Parameter(torch.zeros(2))], TrainConfig(optimizer=name, lr=0.3))
    assert isinstance(opt, cls) and opt.param_groups[0]["lr"] == 0.3


def lrs(cfg: TrainConfig, steps_per_epoch: int) -> list[float]:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = build_scheduler(opt, cfg, steps_per_epoch)
    out = []
    for _ in range(cfg.epochs * steps_per_epoch):
        out.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return out


def test_warmup_then_cosine_at_known_steps():
    got = lrs(TrainConfig(lr=0.1, epochs=10, warmup_epochs=1.0), steps_per_epoch=10)
    assert got[0] == pytest.approx(0.01)       # (0 + 1) / 10 of the way up
    assert got[4] == pytest.approx(0.05)
    assert got[9] == pytest.approx(0.1)        # warmup done
    assert got[10] == pytest.approx(0.1)       # cosine starts at the top
    assert got[55] == pytest.approx(0.05)      # halfway through the 90 cosine steps
    assert got[99] == pytest.approx(0.05 * (1 + math.cos(math.pi * 89 / 90)))
    assert all(a >= b for a, b in zip(got[9:], got[10:]))


def test_step_and_constant_schedules():
    step = lrs(TrainConfig(lr=1.0, epochs=5, schedule="step", step_size=2, gamma=0.5), steps_per_epoch=3)
    assert step == pytest.approx([1.0] * 6 + [0.5] * 6 + [0.25] * 3)
    assert lrs(TrainConfig(lr=0.2, epochs=2, schedule="constant"), 4) == pytest.approx([0.2] * 8)


@pytest.mark.parametrize("kwargs, message", [
    (dict(optimizer="sdg"), r"unknown optimizer 'sdg' \(did you mean 'sgd'\?\)"),
    (dict(schedule="cosin"), r"unknown schedule 'cosin' \(did you mean 'cosine'\?\)"),
    (dict(lr=0.0), r"train\.lr must be a positive number"),
    (dict(epochs=0), r"train\.epochs must be >= 1"),
    (dict(warmup_epochs=20.0, epochs=10), r"train\.warmup_epochs must be in \[0, epochs=10\]"),
    (dict(momentum=0.0), r"nesterov needs train\.momentum > 0"),
    (dict(grad_clip=-1.0), r"train\.grad_clip must be >= 0"),
])
def test_config_validation(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**kwargs)


def test_config_hash_ignores_cosmetic_fields():
    base = TrainConfig()
    assert TrainConfig(log_every_steps=1, checkpoint_every_steps=100).hash() == base.hash()
    assert TrainConfig(lr=0.1).hash() != base.hash()
