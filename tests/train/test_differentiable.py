"""The differentiable strategy: alternating weight / logit steps on the train / search-validation
splits, softmax and Gumbel mixtures, the hardware losses, and the exported argmax arch."""
from __future__ import annotations

import copy
import json
import math
import random

import pytest
import torch
import torch.nn.functional as F

from flexnas import spaces
from flexnas.errors import ConfigError, ConstraintError
from flexnas.ops.blocks import BlockStyle
from flexnas.spaces.candidate import ProxylessSpace
from flexnas.spaces.macro import Macro, Stage
from flexnas.train import TrainConfig, Trainer, load_checkpoint, strategies
from flexnas.train.strategies import StepContext, step_seed
from flexnas.train.strategies.differentiable import gumbel_softmax, temperature

from .toydata import prototype_split, random_batches, shallow_space


def make_ctx(space, net, x_val, y_val, step=0, total=10, recorded=None):
    def step_optimizer(opt):
        if recorded is not None:
            recorded.append([p.grad.clone() for g in opt.param_groups for p in g["params"]])
        opt.step()

    return StepContext(model=net, supernet=net, space=space, criterion=torch.nn.CrossEntropyLoss(),
                       rng=random.Random(step_seed(0, step)), seed=step_seed(0, step), device=torch.device("cpu"),
                       epoch=0, global_step=step, total_steps=total, backward=lambda loss: loss.backward(),
                       step_optimizer=step_optimizer, val_source=lambda: (x_val, y_val))


def batches(seed=0):
    g = torch.Generator().manual_seed(seed)
    x, xv = torch.randn(8, 3, 8, 8, generator=g), torch.randn(8, 3, 8, 8, generator=g)
    return x, torch.randint(0, 10, (8,), generator=g), xv, torch.randint(0, 10, (8,), generator=g)


@pytest.mark.parametrize("cost", ["none", "fbnet", "target"])
def test_logits_learn_on_val_and_weights_on_train_alternating(cost):
    space = shallow_space()
    torch.manual_seed(0)
    net = space.supernet()
    args = {"none": {}, "fbnet": {"cost_loss": "fbnet", "cost_unit": 1e3},
            "target": {"cost_loss": "target", "cost_target": "macs<=0.3M", "cost_weight": 2.0}}[cost]
    strategy = strategies.get("differentiable", mixture="softmax", arch_lr=0.1, **args)
    strategy.check_space(space)
    strategy.setup(net, space, torch.device("cpu"))
    reference = copy.deepcopy(net)
    alpha0 = [a.detach().clone().requires_grad_(True) for a in strategy.logits.params]
    x, y, xv, yv = batches()
    recorded: list = []
    metrics = strategy.step(make_ctx(space, net, xv, yv, recorded=recorded), x, y)

    # 1. The logits' gradient: the architecture loss on the VALIDATION batch, by hand.
    probs = [F.softmax(a, -1) for a in alpha0]
    ce_v = F.cross_entropy(reference(xv, probs), yv)
    macs = space.cost_model().expected(probs)["macs"]
    arch_loss = {"none": ce_v, "fbnet": ce_v * 0.2 * torch.log(macs / 1e3) ** 0.6,
                 "target": ce_v + 2.0 * torch.clamp(macs / 0.3e6 - 1, min=0)}[cost]
    torch.testing.assert_close(metrics["arch_loss"], arch_loss.detach())
    want = torch.autograd.grad(arch_loss, alpha0)
    assert len(recorded) == 1   # the logit optimizer stepped once, inside the step
    for got, w in zip(recorded[0], want):
        torch.testing.assert_close(got, w, rtol=1e-4, atol=1e-7)
    assert any(not torch.equal(a, b) for a, b in zip(strategy.logits.params, alpha0))

    # 2. The weights' gradient: CE on the TRAINING batch through the UPDATED, detached mixture only.
    reference.zero_grad(set_to_none=True)
    updated = [F.softmax(a.detach(), -1) for a in strategy.logits.params]
    F.cross_entropy(reference(x, updated), y).backward()
    for (name, p), q in zip(net.named_parameters(), reference.parameters()):
        assert p.requires_grad, name   # unfrozen after the architecture pass
        if q.grad is None:
            assert p.grad is None or p.grad.abs().max() == 0, name
        else:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert all(a.grad is None for a in strategy.logits.params)   # nothing left for the loop to step


def test_gumbel_temperature_schedule_and_sampling():
    assert temperature(0.0, 5.0, 0.1) == pytest.approx(5.0)
    assert temperature(1.0, 5.0, 0.1) == pytest.approx(0.1)
    assert temperature(0.5, 5.0, 0.1) == pytest.approx(math.sqrt(5.0 * 0.1))
    logits = torch.tensor([1.0, 0.0, -1.0, 0.5])
    g = torch.Generator().manual_seed(0)
    samples = torch.stack([gumbel_softmax(logits, 0.01, g) for _ in range(4000)])
    assert torch.allclose(samples.sum(1), torch.ones(4000))
    assert (samples.max(1).values > 0.99).float().mean() > 0.97   # nearly one-hot at a low temperature
    freq = torch.bincount(samples.argmax(1), minlength=4).float() / 4000
    torch.testing.assert_close(freq, F.softmax(logits, 0), atol=0.03, rtol=0)   # the Gumbel-max trick
    hot = torch.stack([gumbel_softmax(logits, 100.0, g) for _ in range(10)])
    assert hot.max() < 0.3   # nearly uniform at a high temperature
    a = gumbel_softmax(logits, 1.0, torch.Generator().manual_seed(7))
    assert torch.equal(a, gumbel_softmax(logits, 1.0, torch.Generator().manual_seed(7)))


def train_logits(space, data, steps, **args):
    torch.manual_seed(0)
    net = space.supernet()
    strategy = strategies.get("differentiable", mixture="softmax", arch_lr=0.05, **args)
    strategy.check_space(space)
    strategy.setup(net, space, torch.device("cpu"))
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    (train, val) = data
    it_t, it_v = iter(train.epoch(0)), iter(val.epoch(0))
    for step in range(steps):
        x, y = next(it_t)
        xv, yv = next(it_v)
        opt.zero_grad(set_to_none=True)
        strategy.step(make_ctx(space, net, xv, yv, step=step, total=steps), x, y)
        opt.step()
    with torch.no_grad():
        expected = float(space.cost_model().expected(strategy.logits.probs())["macs"])
    return expected, space.cost_model().cost(strategy.derive(space))["macs"]


class TwoLayers(ProxylessSpace):
    """Two searchable layers (7 candidates each) behind the stem: the mixture runs 14 ops a step."""

    macro = Macro(stem_channels=16, stages=(Stage(16, 2, 1),), head_channels=32, style=BlockStyle(act="relu6"))


def test_chosen_macs_fall_as_the_cost_weight_grows():
    space = TwoLayers(input_size=8, num_classes=10, width_mult=0.5)
    lo, hi = space.cost_range("macs")
    train, val = prototype_split(n_train=96, n_val=96, batch_size=8)
    val.batch_size = 8
    results = [train_logits(space, (train, val), 10, cost_loss="target", cost_target=f"macs<={lo / 1e3:.3f}K",
                            cost_weight=w) for w in (0.0, 1.0, 10.0)]
    expected = [r[0] for r in results]
    derived = [r[1] for r in results]
    assert expected[0] > expected[1] > expected[2]
    assert derived[0] >= derived[1] >= derived[2] and derived[2] < derived[0]
    assert derived[2] == lo   # a strong weight drives every layer to its cheapest op


class Killed(Exception):
    pass


def test_derived_arch_is_written_and_resume_is_exact(tmp_path):
    """Kill after step 3 (checkpointed mid-way through a 32-image validation batch read in chunks of
    16), resume, and end with the logits and weights of a run never stopped."""
    space = shallow_space()
    train, val = random_batches(32, 16, seed=1), random_batches(64, 32, seed=2)
    cfg = TrainConfig(epochs=2, lr=0.05, checkpoint_every_steps=1, strategy="differentiable",
                      strategy_args={"mixture": "gumbel", "arch_lr": 0.05, "cost_loss": "fbnet", "cost_unit": 1e3})

    def trainer(folder, callbacks=()):
        torch.manual_seed(0)
        return Trainer(space, space.supernet(), train, cfg, folder, "cpu", 0, progress=False, val_batches=val,
                       callbacks=callbacks)

    straight = trainer(tmp_path / "a")
    straight.fit()
    derived = json.loads((tmp_path / "a" / "derived.json").read_text())
    arch = straight.strategy.derive(space)
    assert derived["arch"] == space.encode(arch) and derived["strategy"] == "differentiable"
    assert derived["macs"] == space.cost_model().cost(arch)["macs"]
    assert len(derived["probs"]) == len(space.choices)
    assert all(abs(sum(p) - 1) < 1e-4 for p in derived["probs"])

    def kill(t):
        if t.global_step == 3:
            raise Killed()

    with pytest.raises(Killed):
        trainer(tmp_path / "b", [kill]).fit()
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["val_position"] == [1, 16]
    resumed = trainer(tmp_path / "b")
    resumed.fit(resume=True)
    for a, b in zip(straight.strategy.logits.params, resumed.strategy.logits.params):
        assert torch.equal(a, b)
    for a, b in zip(straight.supernet.state_dict().values(), resumed.supernet.state_dict().values()):
        assert torch.equal(a, b)


def test_refusals():
    with pytest.raises(ConfigError, match=r"strategy 'differentiable' does not support space 'ofa'; "
                                          r"it supports: fbnet, mobilenetv2, nag, nb201, proxyless, sgnas, spos"):
        strategies.get("differentiable").check_space(spaces.get("ofa"))
    space = shallow_space()
    with pytest.raises(ConfigError, match="trains its architecture parameters on the search-validation split"):
        Trainer(space, space.supernet(), random_batches(), TrainConfig(strategy="differentiable"), "unused",
                "cpu", 0, progress=False)
    with pytest.raises(ConfigError, match=r"cost_unit=1e\+06 .* log\(cost\) is not positive"):
        strategies.get("differentiable", cost_loss="fbnet").check_space(space)
    with pytest.raises(ConstraintError, match=r"cost_target macs<=1K is infeasible: the proxyless space spans"):
        strategies.get("differentiable", cost_loss="target", cost_target="macs<=1K").check_space(space)
    with pytest.raises(ConfigError, match=r"cost_loss 'target' needs cost_target"):
        strategies.get("differentiable", cost_loss="target").check_space(space)
    with pytest.raises(ConfigError, match=r"unknown mixture 'gumble' \(did you mean 'gumbel'\?\)"):
        strategies.get("differentiable", mixture="gumble")


def test_cli_trains_on_digits_and_prints_the_derived_arch(tmp_path, capsys):
    """Through `flexnas supernet` with the DSNAS recipe (one path per step: the cheapest way to get a
    derived arch on the full 21-layer space)."""
    from flexnas.cli import main

    code = main(["supernet", "configs/dsnas_digits.yaml", "--quiet", f"runs_dir={tmp_path}", "name=cli",
                 "train.epochs=1", "space.width_mult=0.25", "data.max_train=100",
                 "train.strategy_args.warmup_epochs=0", "train.warmup_epochs=0"])
    out = capsys.readouterr().out
    assert code == 0
    derived = json.loads((tmp_path / "cli" / "derived.json").read_text())
    assert f"derived arch (dsnas): {derived['arch']}" in out
    assert main(["supernet", "configs/fbnet_digits.yaml", "--quiet", f"runs_dir={tmp_path}", "name=bad",
                 "train.strategy_args.mixture=gumble"]) == 2
    assert "unknown mixture 'gumble' (did you mean 'gumbel'?)" in capsys.readouterr().err


@pytest.mark.parametrize("mixture", ["softmax", "gumbel"])
@pytest.mark.parametrize("name", ["nb201", "nag"])
def test_cell_spaces_train_with_darts_softmax_and_gdas_gumbel(name, mixture):
    """Issue 7: the cell supernets' edge-level mixtures train under the differentiable strategy: one
    step moves the weights (train batch) and the architecture logits (validation batch), and a strong
    MACs penalty drives the derived cell to the cheap end of the space."""
    space = spaces.get(name, input_size=8, num_classes=10, width_mult=0.25)
    torch.manual_seed(0)
    net = space.supernet()
    strategy = strategies.get("differentiable", mixture=mixture, arch_lr=0.5, cost_loss="target",
                              cost_target=f"macs<={space.cost_range('macs')[0]:.0f}", cost_weight=50.0)
    strategy.check_space(space)
    strategy.setup(net, space, torch.device("cpu"))
    before = [p.detach().clone() for p in net.parameters()]
    alpha0 = [a.detach().clone() for a in strategy.logits.params]
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    x, y, xv, yv = batches()
    for step in range(15):
        opt.zero_grad(set_to_none=True)
        strategy.step(make_ctx(space, net, xv, yv, step=step, total=15), x, y)
        opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, net.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(alpha0, strategy.logits.params))
    lo, hi = space.cost_range("macs")
    derived = space.cost_model().cost(strategy.derive(space))["macs"]
    assert derived <= lo + 0.25 * (hi - lo)
