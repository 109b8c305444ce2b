"""The supernet evaluator: BN recalibration matters, is exact, and never touches the supernet."""
from __future__ import annotations

import copy
import random

import pytest
import torch
from torch import nn

from flexnas import Arch
from flexnas.errors import ArchError, DataError
from flexnas.evaluate import SupernetEvaluator, recalibrate_bn
from train.toydata import TensorBatches, one_thread, trained_toy_run


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def trained():
    space, supernet, train, val, _, _ = trained_toy_run()
    return space, supernet, train, val


def sample_archs(space, n: int = 4) -> list[Arch]:
    rng = random.Random(1)
    return [space.sample(rng) for _ in range(n)]


def test_recalibration_beats_the_shared_running_stats(trained):
    """After 50 uniform steps, each candidate's BN saw only ~7 batches of a drifting input: its
    running stats are far from the path's real ones. Recalibrated paths score far higher."""
    space, supernet, train, val = trained
    recal = SupernetEvaluator(supernet, space, train, val, "cpu", bn_batches=5)
    shared = SupernetEvaluator(supernet, space, train, val, "cpu", bn_batches=0)
    archs = sample_archs(space)
    acc_recal = [recal.evaluate(a)["accuracy"] for a in archs]
    acc_shared = [shared.evaluate(a)["accuracy"] for a in archs]
    assert sum(acc_recal) / len(archs) > sum(acc_shared) / len(archs) + 0.2
    assert all(r > s for r, s in zip(acc_recal, acc_shared))
    assert min(acc_recal) > 0.3  # chance is 0.1


def test_evaluation_leaves_the_supernet_untouched_and_is_repeatable(trained):
    space, supernet, train, val = trained
    before = copy.deepcopy(supernet.state_dict())
    mode = supernet.training
    ev = SupernetEvaluator(supernet, space, train, val, "cpu", bn_batches=3, max_val_batches=1)
    arch = sample_archs(space, 1)[0]
    first = ev.evaluate(arch)
    assert ev(arch) == first
    assert 0.0 <= first["accuracy"] <= 1.0 and first["loss"] > 0
    assert ev.num_val == 64  # max_val_batches=1 of 64
    after = supernet.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert supernet.training == mode


def test_recalibrated_stats_are_the_average_over_calibration_batches(trained):
    """With momentum=None, BN keeps the cumulative average: running_mean is the mean of the batch
    means and running_var the mean of the (unbiased) batch variances of the BN's inputs."""
    space, supernet, train, _ = trained
    net = supernet.extract(sample_archs(space, 1)[0])
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:  # garbage from before must not leak into the result
        bn.running_mean.fill_(7.0)
        bn.running_var.fill_(9.0)
    inputs: dict[nn.Module, list[torch.Tensor]] = {bn: [] for bn in bns}
    hooks = [bn.register_forward_pre_hook(lambda m, args: inputs[m].append(args[0].detach().clone()))
             for bn in bns]
    batches = [x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x for x, _ in list(train.epoch(0))[:4]]
    assert recalibrate_bn(net, batches, num_batches=3) == 3
    for h in hooks:
        h.remove()
    for bn in bns:
        xs = inputs[bn]
        assert len(xs) == 3
        mean = torch.stack([x.mean((0, 2, 3)) for x in xs]).mean(0)
        var = torch.stack([x.var((0, 2, 3), unbiased=True) for x in xs]).mean(0)
        torch.testing.assert_close(bn.running_mean, mean, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(bn.running_var, var, rtol=1e-4, atol=1e-5)
        assert bn.momentum == 0.1 and int(bn.num_batches_tracked) == 3
    assert net.training == supernet.training


def test_recalibrate_keeps_dropout_off_and_restores_modes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Dropout(0.5), nn.BatchNorm2d(3), nn.ReLU())
    model.train()
    x = torch.randn(16, 3, 4, 4) + 2.0
    recalibrate_bn(model, [(x, torch.zeros(16))], num_batches=None)
    torch.testing.assert_close(model[1].running_mean, x.mean((0, 2, 3)))  # dropout would scale by 2
    assert model.training and model[0].training and model[1].training
    model.eval()
    recalibrate_bn(model, [x])
    assert not model.training and not model[1].training


def test_recalibrate_without_batches_is_a_data_error():
    with pytest.raises(DataError, match="no batches"):
        recalibrate_bn(nn.Sequential(nn.BatchNorm2d(3)), [], num_batches=5)


def test_evaluator_caches_its_batches_once(trained):
    space, supernet, train, val = trained

    class Counting(TensorBatches):
        calls = 0

        def epoch(self, epoch, start=0):
            Counting.calls += 1
            return super().epoch(epoch, start)

    calib = Counting(train.x, train.y, 32)
    ev = SupernetEvaluator(supernet, space, calib, val, "cpu", bn_batches=2, max_val_batches=1)
    assert len(ev.calib) == 2 and Counting.calls == 1
    for arch in sample_archs(space, 2):
        ev.evaluate(arch)
    assert Counting.calls == 1


def test_evaluator_rejects_foreign_archs_and_empty_data(trained):
    space, supernet, train, val = trained
    ev = SupernetEvaluator(supernet, space, train, val, "cpu", bn_batches=1, max_val_batches=1)
    with pytest.raises(ArchError):
        ev.evaluate(Arch("fbnet", (0,) * len(space.choices)))
    empty = TensorBatches(train.x[:0], train.y[:0], 32)
    with pytest.raises(DataError, match="validation data yields no batches"):
        SupernetEvaluator(supernet, space, train, empty, "cpu")
    with pytest.raises(DataError, match="calibration data yields no batches"):
        SupernetEvaluator(supernet, space, empty, val, "cpu")
