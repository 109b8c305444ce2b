import random

import pytest
import torch

from flexnas.supernet.layers import active_count_distribution
from tests.conftest import ALL_SPACES, small_space


def randomise_bn(module):
    """Non-trivial BN statistics and affine params, so extraction must copy them right."""
    gen = torch.Generator().manual_seed(1)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            if m.weight is not None:
                m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)


@pytest.mark.parametrize("name", ALL_SPACES)
def test_extract_matches_supernet_path(name):
    space = small_space(name)
    net = space.supernet()
    randomise_bn(net)
    net.eval()
    x = torch.randn(4, 3, 32, 32)
    rng = random.Random(0)
    for _ in range(4):
        arch = space.sample(rng)
        sub = net.extract(arch).eval()
        with torch.no_grad():
            diff = (net(x, arch) - sub(x)).abs().max().item()
        assert diff <= 1e-5, (space.encode(arch), diff)
        # the extracted net is standalone: same structure and parameter count as a fresh subnet
        fresh = space.subnet(arch)
        assert sum(p.numel() for p in sub.parameters()) == sum(p.numel() for p in fresh.parameters())
        assert [type(m) for m in sub.modules()] == [type(m) for m in fresh.modules()]


@pytest.mark.parametrize("name", ALL_SPACES)
def test_mixture_with_one_hot_probs_equals_path(name):
    space = small_space(name)
    net = space.supernet()
    randomise_bn(net)
    net.eval()
    x = torch.randn(2, 3, 32, 32)
    arch = space.sample(random.Random(5))
    probs = [torch.nn.functional.one_hot(torch.tensor(c), len(p.options)).float()
             for c, p in zip(arch.choices, space.choices)]
    with torch.no_grad():
        assert torch.allclose(net(x, probs), net(x, arch), atol=1e-5)


@pytest.mark.parametrize("name", ALL_SPACES)
def test_path_training_only_touches_the_path(name):
    space = small_space(name, input_size=8, width_mult=0.25)
    net = space.supernet().train()
    arch = space.sample(random.Random(0))
    net(torch.randn(4, 3, 8, 8), arch).sum().backward()
    with_grad = {n for n, p in net.named_parameters() if p.grad is not None}
    assert with_grad and len(with_grad) < len(list(net.parameters()))


def test_mixture_gradients_reach_all_probabilities():
    space = small_space("sgnas", input_size=8, width_mult=0.25)
    net = space.supernet().train()
    randomise_bn(net)  # zero-initialised residual BNs would (rightly) block the gradient at init
    logits = [torch.zeros(len(p.options), requires_grad=True) for p in space.choices]
    net(torch.randn(4, 3, 8, 8), [l.softmax(-1) for l in logits]).sum().backward()
    assert all(l.grad is not None and l.grad.abs().sum() > 0 for l in logits)


def test_active_count_distribution_matches_enumeration():
    import itertools

    a = torch.tensor([0.1, 0.5, 0.9, 0.3], dtype=torch.float64)
    dist = active_count_distribution(a)
    brute = torch.zeros(5, dtype=torch.float64)
    for bits in itertools.product([0, 1], repeat=4):
        p = torch.prod(torch.stack([a[i] if b else 1 - a[i] for i, b in enumerate(bits)]))
        brute[sum(bits)] += p
    assert torch.allclose(dist, brute)


@pytest.mark.parametrize("name", ["proxyless", "mobilenetv2"])
def test_entangled_supernet_extracts_exactly_and_shares_weights(name):
    space = small_space(name, weight_sharing="entangled")
    net = space.supernet()
    randomise_bn(net)
    net.eval()
    x = torch.randn(3, 3, 32, 32)
    rng = random.Random(3)
    for _ in range(4):
        arch = space.sample(rng)
        sub = net.extract(arch).eval()
        with torch.no_grad():
            assert (net(x, arch) - sub(x)).abs().max().item() <= 1e-5
        fresh = space.subnet(arch)
        assert sum(p.numel() for p in sub.parameters()) == sum(p.numel() for p in fresh.parameters())
    # one conv weight per layer serves every candidate: far fewer parameters than independent ops
    independent = small_space(name).supernet()
    assert sum(p.numel() for p in net.parameters()) < 0.6 * sum(p.numel() for p in independent.parameters())


def test_entangled_rejects_ops_that_cannot_share():
    from flexnas.errors import ArchError, SpaceError

    with pytest.raises(ArchError, match="cannot share weights"):
        small_space("fbnet", weight_sharing="entangled").supernet()
    with pytest.raises(SpaceError, match="did you mean 'entangled'"):
        small_space("proxyless", weight_sharing="entangle")
