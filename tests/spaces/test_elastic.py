"""Elastic spaces (`ofa`, `bignas`): strings, canonical depth, elastic resolution, weight slicing, and
the coupled cost tables (context points) they need."""
import itertools
import random

import numpy as np
import pytest
import torch

from flexnas import spaces
from flexnas.cost import count
from flexnas.cost.counter import count_by_size
from flexnas.cost.model import _optimise_tables
from flexnas.errors import ArchError, SpaceError
from flexnas.ops.blocks import BlockStyle, MBConv, Resize
from tests.supernet.test_supernet import randomise_bn

A0 = "r192-c16-c16d1k3e1-c24d3k3e4-c32d3k3e4-c64d3k3e4-c112d3k3e4-c192d3k3e6-c216d1k3e6-c1792"


def tiny(name, **kw):
    """Digits-sized, narrow, with three elastic resolutions."""
    kw.setdefault("input_size", 16)
    kw.setdefault("num_classes", 10)
    kw.setdefault("width_mult", 0.25)
    kw.setdefault("resolutions", (8, 12, 16))
    return spaces.get(name, **kw)


def test_macro_matches_the_published_spaces():
    ofa = spaces.get("ofa")
    assert len(ofa.resolutions) == 25 and ofa.resolutions[0] == 128 and ofa.resolutions[-1] == 224
    assert [ofa.choices[i].name for i in range(4)] == ["resolution", "stem.width", "s1.width", "s1.depth"]
    assert len(ofa.layers) == 1 + 5 * 4 + 1
    big = spaces.get("bignas")
    assert big.resolutions == (192, 224, 256, 288)
    assert big.choices[1].options == ("16", "24") and big.choices[-1].options == ("1792", "1984")
    assert len(big.layers) == 1 + (2 + 5 + 6 + 6 + 8 + 8 + 2) + 1
    # the smallest net by MACs is AttentiveNAS-A0 (every choice at its minimum), the largest every maximum
    assert big.encode(big.smallest()) == A0
    largest = big.encode(big.largest())
    assert largest == "r288-c24-c24d2k5e1-c32d5k5e6-c40d6k5e6-c72d6k5e6-c128d8k5e6-c216d8k5e6-c224d2k5e6-c1984"


def test_strings_round_trip_and_are_canonical():
    for space in (spaces.get("ofa"), spaces.get("bignas")):
        rng = random.Random(0)
        for _ in range(30):
            arch = space.sample(rng)
            assert space.decode(space.encode(arch)) == arch
    ofa = spaces.get("ofa")
    text = "r160-k3e4.k5e6-k7e3.k3e3.k5e4-k3e6.k3e6-k5e4.k5e4.k5e4.k5e4-k7e6.k3e3"
    assert ofa.encode(ofa.decode(text)) == text


BAD = [
    ("bignas", A0.rsplit("-", 1)[0], "have 10 tokens"),
    ("bignas", A0.replace("r192", "r200"), "token 0: resolution 200 is not allowed; allowed: 192, 224, 256, 288"),
    ("bignas", A0.replace("r192", "192"), "must be the resolution 'r<res>'"),
    ("bignas", A0.replace("c24d3k3e4", "c24d9k3e4"), "stage 2 'c24d9k3e4': s2.depth 9 is not allowed; allowed: 3, 4, 5"),
    ("bignas", A0.replace("c24d3k3e4", "d3k3e4"), "stage 2 'd3k3e4': must be 'c<w>d<d>k<k>e<e>'"),
    ("bignas", A0.replace("-c1792", "-c1000"), "head.width 1000 is not allowed; allowed: 1792, 1984"),
    ("ofa", "r224-k3e4-k3e4.k3e4-k3e4.k3e4-k3e4.k3e4-k3e4.k3e4", "stage 1 'k3e4': 1 blocks, but the depth must be one of 2, 3, 4"),
    ("ofa", "r224-k3e4.k9e4-k3e4.k3e4-k3e4.k3e4-k3e4.k3e4-k3e4.k3e4", "s1.b1.kernel 9 is not allowed; allowed: 3, 5, 7"),
    ("ofa", "r224-k3e4.x-k3e4.k3e4-k3e4.k3e4-k3e4.k3e4-k3e4.k3e4", "block 1 'x' is not 'k<k>e<e>'"),
    ("ofa", "", "empty"),
]


@pytest.mark.parametrize("name,text,message", BAD)
def test_malformed_strings_raise_arch_error_naming_token_and_allowed_values(name, text, message):
    with pytest.raises(ArchError, match=message.replace("(", r"\(").replace(")", r"\)").replace("'", "'")):
        spaces.get(name).decode(text)


def test_blocks_beyond_the_depth_are_canonicalised():
    space = tiny("ofa")
    arch = space.decode("r16-k3e4.k5e6-k7e3.k3e3.k5e4-k3e6.k3e6-k5e4.k5e4.k5e4.k5e4-k7e6.k3e3")
    raw = list(arch.choices)
    unused = space.layer_slices[space._stage_layers[0][3]]  # stage 1 has depth 2: block 3 is unused
    raw[unused.start] = 2
    with pytest.raises(ArchError, match="stage 1 has depth 2, so block 3 is unused"):
        space.validate(type(arch)(space.name, tuple(raw)))
    assert space.repair(raw) == arch  # same network, same arch
    costs = space.cost_model()
    assert costs.cost(type(arch)(space.name, tuple(raw))) == costs.cost(arch)
    rng = random.Random(0)
    for _ in range(20):  # mutation and crossover always return canonical archs
        a, b = space.sample(rng), space.sample(rng)
        for child in (space.mutate(a, 0.5, rng), space.crossover(a, b, rng)):
            assert space.repair(child.choices) == child


def test_size_counts_distinct_canonical_archs():
    space = tiny("bignas", width_mult=0.25)
    rng = random.Random(0)
    # resolutions x widths (stem and mb1 merge to one width at x0.25, the head keeps 2) x per stage
    # depths x kernels x expansions (chosen once per stage in AttentiveNAS)
    widths = [len(space.choices[p].options) for p in space._width_points]
    assert widths[:2] == [1, 1] and widths[-1] == 2
    assert space.size() == 3 * np.prod(widths) * (2 * 2 * 1) * (3 * 2 * 3) * (4 * 2 * 3) * (4 * 2 * 3) \
        * (6 * 2 * 3) * (6 * 2 * 1) * (2 * 2 * 1)
    samples = {space.sample(rng) for _ in range(200)}
    assert len(samples) > 150


@pytest.mark.parametrize("name", ["ofa", "bignas"])
def test_extract_equals_supernet_path_at_every_resolution(name):
    space = tiny(name)
    net = space.supernet()
    randomise_bn(net)
    net.eval()
    x = torch.randn(2, 3, 16, 16)
    rng = random.Random(0)
    seen = set()
    for _ in range(6):
        arch = space.sample(rng)
        seen.add(space.encode(arch).split("-")[0])
        sub = net.extract(arch).eval()
        with torch.no_grad():
            assert (net(x, arch) - sub(x)).abs().max().item() <= 1e-5
        # cost tables are exact at every resolution (forward hooks on the built subnet)
        assert count(space.subnet(arch), (3, 16, 16)) == {k: int(v) for k, v in space.cost_model().cost(arch).items()}
    assert len(seen) > 1  # several resolutions were exercised


def test_resolution_is_applied_to_the_input():
    space = tiny("ofa")
    arch = space.sample(random.Random(1))
    r = int(space.encode(arch).split("-")[0][1:])
    sub = space.subnet(arch).eval()
    assert isinstance(sub.layers[0][0], Resize) and sub.layers[0][0].size == r
    seen = []
    sub.layers[0][1].register_forward_hook(lambda m, i, o: seen.append(i[0].shape[-1]))
    sub(torch.randn(1, 3, 16, 16))
    assert seen == [r]


def test_weights_are_centre_kernels_leading_channels_and_first_blocks():
    space = tiny("bignas", width_mult=0.5, resolutions=(16,))
    net = space.supernet()
    arch = space.smallest()  # k3, the narrowest widths, the shallowest depths
    sub = net.extract(arch)
    stage2 = space._stage_layers[1]
    block = sub.layers[stage2[0]]
    big = net.layers[stage2[0]]
    c_in, c_out = block.expand[0].weight.shape[1], block.project[0].weight.shape[0]
    mid = block.depthwise[0].weight.shape[0]
    assert torch.equal(block.depthwise[0].weight, big.depthwise.weight[:mid, :, 1:4, 1:4])  # k3 of k5
    assert torch.equal(block.expand[0].weight, big.expand.weight[:mid, :c_in])
    assert torch.equal(block.project[0].weight, big.project.weight[:c_out, :mid])
    depth = int(space.encode(arch).split("-")[3].split("d")[1][0])
    assert all(isinstance(sub.layers[l], MBConv) for l in stage2[:depth])
    assert all(isinstance(sub.layers[l], torch.nn.Identity) for l in stage2[depth:])


def test_sandwich_extremes_train_shared_weights():
    """The smallest and largest subnets share the supernet's leading weights: a step on the smallest
    changes the largest's output."""
    space = tiny("bignas")
    net = space.supernet().train()
    x = torch.randn(4, 3, 16, 16)
    small, large = space.smallest(), space.largest()
    net.eval()
    with torch.no_grad():
        before = net(x, large).clone()
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    net(x, small).square().mean().backward()
    opt.step()
    net.eval()
    with torch.no_grad():
        assert not torch.allclose(net(x, large), before)


def test_optimiser_over_shared_points_matches_brute_force():
    rng = np.random.default_rng(0)
    counts = [2, 3, 2, 4, 3]
    points = [(0, 1), (1, 2, 3), (0, 3, 4), (4,), ()]
    tables = [rng.integers(0, 100, size=int(np.prod([counts[p] for p in pts]))).astype(float) for pts in points]

    def total(choice):
        s = 0.0
        for t, pts in zip(tables, points):
            idx, mul = 0, 1
            for p in pts:
                idx += choice[p] * mul
                mul *= counts[p]
            s += t[idx]
        return s

    brute = [(total(c), c) for c in itertools.product(*(range(n) for n in counts))]
    for largest in (False, True):
        value, choice = _optimise_tables(tables, points, [tuple(counts[p] for p in pts) for pts in points],
                                         len(counts), largest)
        target = max(b[0] for b in brute) if largest else min(b[0] for b in brute)
        assert value == target and total(choice) == target


def test_count_by_size_is_exact_and_falls_back_for_resampling_modules():
    style = BlockStyle(act="swish", se_ratio=0.25, conv_shortcut=True)
    with torch.device("meta"):
        block = MBConv(16, 24, 5, 4, 2, style)
        resampling = torch.nn.Sequential(Resize(64), torch.nn.Conv2d(3, 8, 3, 2, 1))
    for module, channels in ((block, 16), (resampling, 3)):
        by_size = count_by_size(module, channels)
        for size in (7, 14, 28, 33, 56):
            assert by_size(size) == count(module, (channels, size, size))


def test_mixtures_are_exact_over_small_supports(monkeypatch):
    from flexnas.supernet import elastic

    space = tiny("ofa")
    net = space.supernet()
    randomise_bn(net)
    net.eval()
    x = torch.randn(2, 3, 16, 16)
    arch = space.sample(random.Random(2))
    probs = [torch.nn.functional.one_hot(torch.tensor(c), len(p.options)).float()
             for c, p in zip(arch.choices, space.choices)]
    with torch.no_grad():
        assert torch.allclose(net(x, probs), net(x, arch), atol=1e-5)
        # block 0 of stage 1 mixing kernels 3 and 5 half and half = the mean of the two paths
        pts = space.layer_points[1]
        k = pts.index(next(i for i, p in enumerate(space.choices) if p.name == "s1.b0.kernel"))
        h = net.layers[0].forward_path(x, tuple(arch.choices[p] for p in space.layer_points[0]))
        values = [arch.choices[p] for p in pts]
        paths = []
        for kernel in (0, 1):
            values[k] = kernel
            paths.append(net.layers[1].forward_path(h, tuple(values)))
        mixed = [probs[p] for p in pts]
        mixed[k] = torch.tensor([0.5, 0.5, 0.0])
        assert torch.allclose(net.layers[1].forward_mixture(h, mixed), (paths[0] + paths[1]) / 2, atol=1e-6)
    uniform = [torch.full((len(p.options),), 1.0 / len(p.options)) for p in space.choices]
    with pytest.raises(SpaceError, match="a mixture over resolutions is not defined"):
        net(x, uniform)
    uniform[0] = probs[0]
    monkeypatch.setattr(elastic, "MAX_MIXTURE_PATHS", 4)
    with pytest.raises(SpaceError, match="train elastic spaces by sampling"):
        net(x, uniform)


def test_small_inputs_use_cifar_strides_and_their_own_size():
    space = spaces.get("ofa", input_size=32, num_classes=10)
    assert space.resolutions == (32,) and space.layers[-1].in_hw == 4
    with pytest.raises(SpaceError, match="too small"):
        spaces.get("bignas", input_size=4)
    with pytest.raises(SpaceError, match="resolutions must be positive"):
        spaces.get("ofa", resolutions=[])


def test_cli_samples_and_costs_elastic_archs(capsys):
    import json

    from flexnas.cli import main

    assert main(["sample", "ofa", "-n", "2", "--input-size", "32", "--num-classes", "10"]) == 0
    lines = capsys.readouterr().out.split()
    space = spaces.get("ofa", input_size=32, num_classes=10)
    assert len(lines) == 2 and all(space.encode(space.decode(l)) == l for l in lines)
    assert main(["cost", "ofa", lines[0], "--input-size", "32", "--num-classes", "10", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["macs"] == int(space.cost_model().cost(space.decode(lines[0]))["macs"])
    assert main(["cost", "ofa", "r32-k3e4", "--input-size", "32"]) == 2
    assert "ofa archs have 6 tokens" in capsys.readouterr().err
