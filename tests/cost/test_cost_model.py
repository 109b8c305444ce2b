"""The cost model must be exact: equal to an independent count of the built network, to the unit."""
import random

import numpy as np
import pytest
import torch

from flexnas import spaces
from flexnas.cost import count
from tests.conftest import ALL_SPACES, small_space


@pytest.mark.parametrize("name", ALL_SPACES)
def test_cost_equals_hook_count_of_built_subnet_for_100_archs(name):
    """ImageNet size, 1000 classes: forward hooks on each built standalone subnet (meta device)."""
    space = spaces.get(name, input_size=224)
    cm, rng = space.cost_model(), random.Random(0)
    # Cell-space subnets hold 11-15 cells (about 1 s per meta count at 224); tests/spaces/test_cells.py
    # checks their costs against published figures too.
    for _ in range(12 if name in ("nb201", "nag") else 100):
        arch = space.sample(rng)
        with torch.device("meta"):
            net = space.subnet(arch)
        assert count(net, (3, 224, 224)) == {k: int(v) for k, v in cm.cost(arch).items()}, space.encode(arch)


@pytest.mark.parametrize("name", ALL_SPACES)
def test_cost_exact_on_real_tensors_at_cifar_size(name):
    space = small_space(name)
    cm, rng = space.cost_model(), random.Random(1)
    for _ in range(3):
        arch = space.sample(rng)
        assert count(space.subnet(arch), (3, 32, 32)) == {k: int(v) for k, v in cm.cost(arch).items()}


@pytest.mark.parametrize("name", ALL_SPACES)
def test_vectorised_costs_match_and_range_is_exact(name):
    space = small_space(name)
    cm, rng = space.cost_model(), random.Random(2)
    archs = [space.sample(rng) for _ in range(200)]
    batch = cm.costs(archs)
    as_array = cm.costs(np.array([a.choices for a in archs]))
    for metric in cm.metrics:
        single = np.array([cm.cost(a)[metric] for a in archs])
        np.testing.assert_array_equal(batch[metric], single)
        np.testing.assert_array_equal(as_array[metric], single)
        lo, hi = cm.range(metric)
        assert lo <= single.min() and single.max() <= hi
        assert cm.cost(space.smallest(metric))[metric] == lo
        assert cm.cost(space.largest(metric))[metric] == hi


def one_hot_probs(space, arch, dtype=torch.float64):
    return [torch.nn.functional.one_hot(torch.tensor(c), len(p.options)).to(dtype)
            for c, p in zip(arch.choices, space.choices)]


@pytest.mark.parametrize("name", ALL_SPACES)
def test_expected_cost_is_differentiable_and_exact_on_one_hot(name):
    space = small_space(name)
    cm, rng = space.cost_model(), random.Random(3)
    for _ in range(5):
        arch = space.sample(rng)
        exp = cm.expected(one_hot_probs(space, arch))
        for metric in cm.metrics:
            assert exp[metric].item() == pytest.approx(cm.cost(arch)[metric], rel=1e-12)
    logits = [torch.randn(len(p.options), dtype=torch.float64, requires_grad=True) for p in space.choices]
    exp = cm.expected([l.softmax(-1) for l in logits])["macs"]
    exp.backward()
    assert all(l.grad is not None and torch.isfinite(l.grad).all() for l in logits)
    lo, hi = cm.range("macs")
    assert lo <= exp.item() <= hi
    # leading batch dimensions are supported (used by generators)
    batched = [torch.stack([l.detach().softmax(-1)] * 4) for l in logits]
    assert cm.expected(batched)["macs"].shape == (4,)


def test_expected_matches_monte_carlo_for_sgnas():
    """The unified space's joint (mixed-radix) expectation equals the mean cost of sampled archs."""
    space = small_space("sgnas")
    cm = space.cost_model()
    gen = torch.Generator().manual_seed(0)
    probs = [torch.rand(len(p.options), generator=gen, dtype=torch.float64).softmax(-1) for p in space.choices]
    samples = torch.stack([torch.multinomial(p, 20000, replacement=True, generator=gen) for p in probs], 1)
    repaired = np.array([space.repair(row.tolist()).choices for row in samples[:4000]])
    mc = cm.costs(repaired)["macs"].mean()
    assert cm.expected(probs)["macs"].item() == pytest.approx(mc, rel=0.01)
