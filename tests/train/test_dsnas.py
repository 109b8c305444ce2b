"""DSNAS: single sampled paths, one backward, the logits' gradient by DSNAS's credit assignment
(checked against finite differences in float64), the FLOPs loss, early fixing and the BN reset."""
from __future__ import annotations

import copy
import json
import random

import pytest
import torch
import torch.nn.functional as F

from flexnas import spaces
from flexnas.errors import ConfigError
from flexnas.train import TrainConfig, Trainer, strategies
from flexnas.train.strategies import StepContext, step_seed

from .toydata import random_batches, shallow_space


def make_ctx(space, net, step=0, epoch=0, calls=None):
    calls = [] if calls is None else calls
    return StepContext(model=net, supernet=net, space=space, criterion=torch.nn.CrossEntropyLoss(),
                       rng=random.Random(step_seed(1, step)), seed=step_seed(1, step), device=torch.device("cpu"),
                       epoch=epoch, global_step=step, total_steps=10,
                       backward=lambda loss: (calls.append(loss), loss.backward()), step_optimizer=lambda o: o.step())


def setup(dtype=torch.float32, **args):
    space = shallow_space()
    torch.manual_seed(0)
    net = space.supernet().to(dtype)
    strategy = strategies.get("dsnas", **args)
    strategy.check_space(space)
    strategy.setup(net, space, torch.device("cpu"))
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for a in strategy.logits.params:
            a.copy_(torch.randn(a.shape, generator=g))
        # As if trained: the init zeroes each residual branch's last BN scale, which makes every
        # path scale-invariant (dL/dZ = 0 exactly) until training moves it.
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d) and m.weight is not None:
                m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=g, dtype=m.weight.dtype))
    return space, net, strategy


def loss_with_gate(net, x, y, arch, layer, scale):
    """The path's loss with one layer's output multiplied by `scale` (Z_s = scale), by running the
    supernet's pieces by hand."""
    h = net.stem(x)
    for i, (mod, config) in enumerate(zip(net.layers, space_configs(arch))):
        h = mod.forward_path(h, config)
        if i == layer:
            h = h * scale
    return F.cross_entropy(net.head(h), y)


def space_configs(arch):
    return [(c,) for c in arch.choices]   # one choice point per layer


@pytest.mark.parametrize("cost", [False, True])
def test_alpha_gradient_matches_a_hand_computation(cost, monkeypatch):
    args = {"cost_loss": "target", "cost_target": "macs<=0.3M", "cost_weight": 0.5} if cost else {}
    space, net, strategy = setup(torch.float64, **args)
    reference = copy.deepcopy(net)
    alpha = [a.detach().clone() for a in strategy.logits.params]
    seen: list = []
    net.register_forward_hook(lambda m, a, out: seen.append(a[1]))
    backwards: list = []
    original = torch.autograd.backward
    monkeypatch.setattr(torch.autograd, "backward", lambda *a, **k: (backwards.append(1), original(*a, **k))[1])
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 10, (8,), generator=g)
    calls: list = []
    strategy.step(make_ctx(space, net, calls=calls), x, y)
    assert len(seen) == 1 and len(calls) == 1 and len(backwards) == 1   # one path, one backward, none inside forward
    arch = seen[0]

    eps = 1e-6
    signal = []
    for i, (a, s) in enumerate(zip(alpha, arch.choices)):
        dl_dz = (loss_with_gate(reference, x, y, arch, i, 1 + eps) - loss_with_gate(reference, x, y, arch, i, 1 - eps)) / (2 * eps)
        grad_log_p = F.one_hot(torch.tensor(s), len(a)).double() - F.softmax(a.double(), 0)
        want = dl_dz.detach() * grad_log_p
        if cost:
            leaves = [b.double().requires_grad_(True) for b in alpha]
            probs = [F.softmax(b, 0) for b in leaves]
            macs = space.cost_model().expected(probs)["macs"]
            penalty = 0.5 * torch.clamp(macs / 0.3e6 - 1, min=0)
            want = want + torch.autograd.grad(penalty, leaves)[i]
        # The logits are float32: compare at float32 precision.
        torch.testing.assert_close(strategy.logits.params[i].grad.double(), want, rtol=1e-4, atol=1e-7)
        signal.append(float(want.abs().max()))
    # A real signal, not zeros compared with zeros. (A layer whose whole output feeds a conv + BN
    # alone, like the last one before the head, gets almost none: BN undoes the scale of Z.)
    assert max(signal) > 1e-3
    # The weights get the plain path's gradient: the gates are 1.
    F.cross_entropy(reference(x, arch), y).backward()
    for p, q in zip(net.parameters(), reference.parameters()):
        if q.grad is not None:
            torch.testing.assert_close(p.grad, q.grad)


def test_paths_are_sampled_from_softmax_alpha():
    space, net, strategy = setup()
    with torch.no_grad():
        strategy.logits.params[0].copy_(torch.tensor([3.0, 0, 0, 0, 0, 0, -3.0]))
    probs = F.softmax(strategy.logits.params[0].detach(), 0)
    ops = [strategy.sample(make_ctx(space, net, step))[0][0] for step in range(600)]
    freq = torch.bincount(torch.tensor(ops), minlength=7).float() / 600
    torch.testing.assert_close(freq, probs, atol=0.05, rtol=0)
    assert strategy.sample(make_ctx(space, net, 5))[0] == strategy.sample(make_ctx(space, net, 5))[0]


def test_early_fixing_then_bn_reset_for_the_derived_child():
    space, net, strategy = setup(fix_threshold=0.3)
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))
    with torch.no_grad():
        for a in strategy.logits.params:
            a.zero_()
        strategy.logits.params[1][2] = 5.0     # top-1 minus top-2 far above 0.3
    strategy.step(make_ctx(space, net), x, y)
    strategy.after_step(make_ctx(space, net))
    assert strategy.fixed[1] == 2 and all(f < 0 for i, f in enumerate(strategy.fixed) if i != 1)
    assert strategy.bn_reset_at == -1
    for step in range(1, 6):   # the fixed layer always runs its op and its logits get no gradient
        strategy.logits.params[1].grad = None
        ops, _ = strategy.sample(make_ctx(space, net, step))
        assert ops[1] == 2
    strategy.step(make_ctx(space, net, 6), x, y)
    assert strategy.logits.params[1].grad is None and strategy.logits.params[0].grad is not None

    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert any(float(m.running_mean.abs().sum()) > 0 for m in bns)
    with torch.no_grad():
        for i, a in enumerate(strategy.logits.params):
            a[i % len(a)] = 5.0
    strategy.after_step(make_ctx(space, net, 7))
    assert all(f >= 0 for f in strategy.fixed) and strategy.bn_reset_at == 7
    assert all(float(m.running_mean.abs().sum()) == 0 and torch.all(m.running_var == 1) for m in bns)
    assert strategy.derive(space).choices == tuple(strategy.fixed)
    metrics = strategy.step(make_ctx(space, net, 8), x, y)   # only the child trains now
    assert metrics["fixed"] == len(space.choices)
    assert all(a.grad is None for a in strategy.logits.params)


def test_trains_under_the_loop_writes_derived_and_resumes_its_state(tmp_path):
    space = shallow_space()
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=1, lr=0.05, strategy="dsnas",
                      strategy_args={"arch_lr": 0.1, "cost_loss": "target", "cost_target": "macs<=0.3M"})
    trainer = Trainer(space, space.supernet(), random_batches(48, 16), cfg, tmp_path, "cpu", 0, progress=False)
    final = trainer.fit()
    assert {"loss", "acc", "fixed", "expected_macs"} <= set(final)
    derived = json.loads((tmp_path / "derived.json").read_text())
    assert derived["arch"] == space.encode(trainer.strategy.derive(space))
    again = Trainer(space, space.supernet(), random_batches(48, 16), cfg, tmp_path, "cpu", 0, progress=False)
    again.fit(resume=True)
    assert again.strategy.fixed == trainer.strategy.fixed
    for a, b in zip(again.strategy.logits.params, trainer.strategy.logits.params):
        assert torch.equal(a, b)


def test_refusals():
    with pytest.raises(ConfigError, match=r"strategy 'dsnas' gates one sampled op per layer, but space 'sgnas' "
                                          r"has several choice points per layer; it supports: .*proxyless"):
        strategies.get("dsnas").check_space(spaces.get("sgnas", input_size=32))
    with pytest.raises(ConfigError, match=r"unknown cost_loss 'fbnet'; allowed: none, target"):
        strategies.get("dsnas", cost_loss="fbnet").check_space(shallow_space())
    with pytest.raises(ConfigError, match=r"fix_threshold must be in \(0, 1\]"):
        strategies.get("dsnas", fix_threshold=0)
