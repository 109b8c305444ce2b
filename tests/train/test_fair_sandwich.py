"""Strict fairness (FairNAS) and the sandwich rule with in-place distillation (BigNAS / AttentiveNAS):
each strategy's defining property, checked by instrumenting the supernet."""
from __future__ import annotations

import copy
import json
import random
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from flexnas import spaces
from flexnas.errors import CheckpointError, ConfigError
from flexnas.ops.blocks import BlockStyle
from flexnas.spaces.candidate import ProxylessSpace
from flexnas.spaces.macro import Macro, Stage
from flexnas.supernet.layers import CandidateLayer
from flexnas.train import TrainConfig, Trainer, strategies
from flexnas.train.strategies import StepContext, step_seed
from flexnas.train.strategies.fair import fair_paths

from .toydata import random_batches, shallow_space


def make_ctx(space, net, step=0, seed=3, calls=None, criterion=None):
    calls = [] if calls is None else calls
    return StepContext(model=net, supernet=net, space=space, criterion=criterion or torch.nn.CrossEntropyLoss(),
                       rng=random.Random(step_seed(seed, step)), seed=step_seed(seed, step),
                       device=torch.device("cpu"), epoch=0, global_step=step, total_steps=10,
                       backward=lambda loss: (calls.append(loss.detach()), loss.backward()),
                       step_optimizer=lambda opt: opt.step())


def batch(n=8, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.randint(0, 10, (n,), generator=g)


def gradient_counts(net):
    """Per (layer, candidate): how many times a gradient flowed back into that candidate's output."""
    counts: Counter = Counter()
    for li, layer in enumerate(net.layers):
        assert isinstance(layer, CandidateLayer)
        for ci, op in enumerate(layer.candidates):
            def hook(m, args, out, key=(li, ci)):
                out.register_hook(lambda g: counts.update([key]))
            op.register_forward_hook(hook)
    return counts


# ---- fair ----------------------------------------------------------------------------------------
def test_fair_every_candidate_gets_a_gradient_exactly_once_per_step():
    space = spaces.get("spos", input_size=8, num_classes=10, width_mult=0.25)   # 4 candidates everywhere
    torch.manual_seed(0)
    net = space.supernet()
    counts = gradient_counts(net)
    x, y = batch()
    calls: list = []
    for step in range(2):
        counts.clear()
        strategies.get("fair").step(make_ctx(space, net, step, calls=calls), x, y)
        expected = {(li, ci) for li, layer in enumerate(space.layers) for ci in range(len(layer.points[0].options))}
        assert set(counts) == expected and set(counts.values()) == {1}
    assert len(calls) == 2 * 4   # m paths, one backward each, per step


def test_fair_layers_with_fewer_candidates_differ_by_at_most_one():
    """ProxylessNAS layers that change shape cannot hold `skip` (6 candidates, not 7): each candidate
    trains once or twice in a step, exactly one of them twice; the others exactly once."""
    space = shallow_space()
    torch.manual_seed(0)
    net = space.supernet()
    counts = gradient_counts(net)
    x, y = batch()
    strategies.get("fair").step(make_ctx(space, net), x, y)
    m = max(len(p.options) for p in space.choices)
    for li, layer in enumerate(space.layers):
        n = len(layer.points[0].options)
        per = [counts[(li, ci)] for ci in range(n)]
        assert sum(per) == m
        assert sorted(per) == [1] * (n - m % n) + [2] * (m % n) if n < m else per == [1] * n
    assert any(len(layer.points[0].options) < m for layer in space.layers)


def test_fair_paths_are_permutations_and_depend_on_the_rng():
    space = shallow_space()
    paths = fair_paths(space, random.Random(1))
    full = [i for i, p in enumerate(space.choices) if len(p.options) == len(paths)]
    for i in full:
        assert sorted(a.choices[i] for a in paths) == list(range(len(paths)))
    assert fair_paths(space, random.Random(1)) == paths != fair_paths(space, random.Random(2))


def test_fair_mean_reduction_scales_the_summed_gradient():
    space = shallow_space()
    torch.manual_seed(0)
    net = space.supernet()
    x, y = batch()
    grads = {}
    for reduction in ("sum", "mean"):
        net.zero_grad(set_to_none=True)
        strategies.get("fair", reduction=reduction).step(make_ctx(space, net), x, y)
        grads[reduction] = [p.grad.clone() for p in net.parameters() if p.grad is not None]
    m = max(len(p.options) for p in space.choices)
    for gs, gm in zip(grads["sum"], grads["mean"]):
        torch.testing.assert_close(gm * m, gs, rtol=1e-4, atol=1e-6)


def test_fair_refuses_spaces_with_several_choice_points_per_layer():
    with pytest.raises(ConfigError, match=r"strategy 'fair' .* space 'sgnas' has several choice points per layer; "
                                          r"it supports: .*proxyless.*spos"):
        strategies.get("fair").check_space(spaces.get("sgnas", input_size=32))
    with pytest.raises(ConfigError, match=r"unknown reduction 'man' \(did you mean 'mean'\?\)"):
        strategies.get("fair", reduction="man")


# ---- sandwich ------------------------------------------------------------------------------------
class DropoutShallow(ProxylessSpace):
    """The shallow proxyless macro with head dropout, to see where dropout is active."""

    macro = Macro(stem_channels=16, stages=(Stage(16, 2, 1), Stage(32, 2, 2)), head_channels=64,
                  style=BlockStyle(act="relu6"), head_dropout=0.2)


def entangled(dropout: bool = False):
    cls = DropoutShallow if dropout else type(shallow_space())
    return cls(input_size=8, num_classes=10, width_mult=0.5, weight_sharing="entangled")


def record_forwards(net):
    seen: list = []
    net.register_forward_hook(lambda m, args, out: seen.append((args[1], out)))
    return seen


def test_sandwich_largest_is_the_only_teacher_and_gets_no_gradient_from_students():
    space = entangled()
    torch.manual_seed(0)
    net = space.supernet()
    reference = copy.deepcopy(net)
    seen = record_forwards(net)
    teacher_grads: list = []

    def watch_teacher(m, args, out):
        if args[1] == space.largest():
            out.register_hook(teacher_grads.append)

    net.register_forward_hook(watch_teacher)
    x, y = batch()
    calls: list = []
    strategy = strategies.get("sandwich", num_random=2)
    strategy.step(make_ctx(space, net, calls=calls), x, y)

    archs = [a for a, _ in seen]
    assert archs[0] == space.largest("macs") and archs[1] == space.smallest("macs") and len(archs) == 4
    rng = random.Random(step_seed(3, 0))     # the random students come from the step's rng
    assert archs[2:] == [space.sample(rng), space.sample(rng)]
    assert len(teacher_grads) == 1            # the teacher's logits get the label loss's gradient only
    teacher = seen[0][1].detach()
    soft = F.softmax(teacher, 1)
    torch.testing.assert_close(calls[0], F.cross_entropy(teacher, y))
    for (_, student), loss in zip(seen[1:], calls[1:]):
        hand = (soft * (soft.log() - F.log_softmax(student.detach(), 1))).sum(1).mean()
        torch.testing.assert_close(loss, hand)

    # The accumulated gradient is exactly CE(largest) + sum of KL(student || detached soft labels).
    total = F.cross_entropy(reference(x, archs[0]), y)
    for arch in archs[1:]:
        total = total + F.kl_div(F.log_softmax(reference(x, arch), 1), soft, reduction="batchmean")
    total.backward()
    for (name, p), q in zip(net.named_parameters(), reference.parameters()):
        if q.grad is None:
            assert p.grad is None or p.grad.abs().max() == 0, name
        else:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_sandwich_dropout_only_in_the_largest_subnet():
    space = entangled(dropout=True)
    net = space.supernet().train()
    drops = [m for m in net.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops
    modes: list = []
    drops[0].register_forward_pre_hook(lambda m, args: modes.append(m.training))
    strategies.get("sandwich", num_random=1).step(make_ctx(space, net), *batch())
    assert modes == [True, False, False]
    assert drops[0].training   # restored after the students


@pytest.mark.parametrize("mode", ["bestup", "worstup"])
def test_attentive_picks_the_best_or_worst_loss_candidate_and_leaves_no_trace(mode):
    space = entangled()
    torch.manual_seed(0)
    net = space.supernet().train()
    x, y = batch()
    ctx = make_ctx(space, net)
    strategy = strategies.get("sandwich", attentive=mode, candidates=4)
    pool = strategy._matched_pool(space, random.Random(5))
    assert len(pool) == 4
    macs = space.cost_model().costs(pool)["macs"]
    buffers = [b.clone() for b in net.buffers()]
    with torch.no_grad():
        losses = [float(F.cross_entropy(copy.deepcopy(net)(x, a), y)) for a in pool]
    picked = strategy._pick(ctx, x, y, pool)
    want = min if mode == "bestup" else max
    assert picked == pool[losses.index(want(losses))]
    assert all(torch.equal(a, b) for a, b in zip(buffers, net.buffers()))   # BN statistics restored
    # FLOPs-matched: the pool is the 4 nearest in MACs to the first draw among 32 uniform samples.
    draws = [space.sample(r) for r in [random.Random(5)] for _ in range(32)]
    all_macs = space.cost_model().costs(draws)["macs"]
    nearest = sorted(abs(all_macs - all_macs[0]))[:4]
    assert sorted(abs(macs - all_macs[0])) == pytest.approx(nearest)


def test_sandwich_refuses_independent_candidates_naming_the_supported_spaces():
    with pytest.raises(ConfigError, match=r"strategy 'sandwich' needs subnets that share .* space 'proxyless' has "
                                          r"independent candidates .*; it supports: proxyless \(with "
                                          r"weight_sharing: entangled\).*sgnas"):
        strategies.get("sandwich").check_space(spaces.get("proxyless", input_size=32))
    strategies.get("sandwich").check_space(spaces.get("sgnas", input_size=32))
    with pytest.raises(ConfigError, match="unknown attentive 'best'"):
        strategies.get("sandwich", attentive="best")


def test_sandwich_trains_under_the_loop(tmp_path):
    space = entangled()
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=1, lr=0.05, strategy="sandwich", strategy_args={"num_random": 1})
    final = Trainer(space, space.supernet(), random_batches(48, 16), cfg, tmp_path, "cpu", 0, progress=False).fit()
    assert {"loss", "loss_max", "distill", "acc", "acc_min"} <= set(final)
    assert not (tmp_path / "derived.json").exists()   # sandwich leaves the choice to search


# ---- resume across strategies --------------------------------------------------------------------
def test_resuming_another_strategys_checkpoint_names_the_field(tmp_path):
    space = shallow_space()
    data = random_batches(32, 16)
    Trainer(space, space.supernet(), data, TrainConfig(epochs=1), tmp_path, "cpu", 0, progress=False).fit()
    other = Trainer(space, space.supernet(), data, TrainConfig(epochs=1, strategy="fair"), tmp_path, "cpu", 0,
                    progress=False)
    with pytest.raises(CheckpointError, match=r"strategy: checkpoint has 'uniform', this run has 'fair'"):
        other.fit(resume=True)


def test_cli_lists_strategies_with_arguments_and_spaces(capsys):
    from flexnas.cli import main

    assert main(["strategies", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert {"uniform", "fair", "sandwich", "differentiable", "dsnas"} <= set(rows)
    assert rows["fair"]["arguments"] == {"reduction": "sum"}
    assert "sgnas" not in rows["fair"]["spaces"] and "proxyless" in rows["fair"]["spaces"]
    assert rows["differentiable"]["arguments"]["mixture"] == "gumbel"
    assert main(["strategies"]) == 0
    assert "sandwich: The sandwich rule" in capsys.readouterr().out
