"""Cell spaces: NAS-Bench-201 (benchmark indices, published costs, strings) and NAG (canonical
graphs, variation that keeps graphs valid, reduction-cell strides, the cost relaxation), and their
supernets in the trainer."""
import itertools
import random

import numpy as np
import pytest
import torch

from flexnas import spaces
from flexnas.errors import ArchError, SpaceError
from flexnas.spaces.nag import COMPUTE, EDGES, CellGraph, _count_graphs, canonical, graph_config

NB201_ARCH1 = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
NB201_ARCH0 = "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|"


@pytest.fixture(scope="module")
def nb201():
    return spaces.get("nb201")


# ---- NAS-Bench-201 ----------------------------------------------------------------------------------
@pytest.mark.parametrize("index,text", [
    (0, NB201_ARCH0),
    (1, NB201_ARCH1),
    (9, "|avg_pool_3x3~0|+|none~0|none~1|+|skip_connect~0|none~1|nor_conv_3x3~2|"),
    (123, "|avg_pool_3x3~0|+|avg_pool_3x3~0|nor_conv_1x1~1|+|none~0|avg_pool_3x3~1|nor_conv_3x3~2|"),
])
def test_nb201_benchmark_indices(nb201, index, text):
    """Indices asserted by the benchmark's generation script and by the NATS-Bench API (docs/zoo_sources.md)."""
    assert nb201.index(nb201.decode(text)) == index
    assert nb201.encode(nb201.from_index(index)) == text


def test_nb201_index_is_a_bijection_over_all_15625_cells(nb201):
    archs = nb201.all_archs()
    assert len(archs) == len(set(archs)) == 15625 == nb201.size()
    rng = random.Random(0)
    for i in rng.sample(range(15625), 50):
        assert nb201.index(archs[i]) == i
    with pytest.raises(ArchError, match="0..15624"):
        nb201.from_index(15625)


# (arch, input, classes, published FLOPs in M, published params in M). NAS-Bench-201 counts FLOPs as
# conv + linear multiply-adds plus the classifier bias, i.e. our MACs + num_classes.
PUBLISHED = [
    (NB201_ARCH0, 32, 10, 15.64737, None),
    (NB201_ARCH0, 32, 100, 15.65322, None),
    (NB201_ARCH0, 16, 120, 3.91948, None),
    (NB201_ARCH1, 32, 10, 113.95137, 0.802426),
    ("|skip_connect~0|+|none~0|nor_conv_3x3~1|+|avg_pool_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|", 32, 10, 113.95137, 0.802426),
    (NB201_ARCH1, 32, 100, 113.96, 0.808),
    (NB201_ARCH1, 16, 120, 28.50, 0.810),
]


@pytest.mark.parametrize("text,size,classes,flops_m,params_m", PUBLISHED)
def test_nb201_costs_match_published_figures(text, size, classes, flops_m, params_m):
    space = spaces.get("nb201", input_size=size, num_classes=classes)
    cost = space.cost_model().cost(space.decode(text))
    digits = len(str(flops_m).split(".")[1])
    assert round((cost["macs"] + classes) / 1e6, digits) == flops_m
    if params_m is not None:
        assert round(cost["params"] / 1e6, len(str(params_m).split(".")[1])) == params_m


def test_nb201_extremes(nb201):
    cm = nb201.cost_model()
    assert nb201.encode(nb201.largest("params")) == "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+" \
                                                    "|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"
    assert cm.range("params")[1] == 1531546  # the '1.5M' largest cell
    assert set(nb201.encode(nb201.smallest("params")).replace("+", "|").split("|")) <= \
        {"", "none~0", "none~1", "none~2", "skip_connect~0", "skip_connect~1", "skip_connect~2",
         "avg_pool_3x3~0", "avg_pool_3x3~1", "avg_pool_3x3~2"}


@pytest.mark.parametrize("text,message", [
    ("|nor_conv_3x3~0|+|nor_conv_3x3~0|", "3 nodes"),
    (NB201_ARCH1.replace("avg_pool_3x3", "avg_pool_3x4"), "unknown op 'avg_pool_3x4' \\(did you mean 'avg_pool_3x3'"),
    (NB201_ARCH1.replace("skip_connect~2", "skip_connect~3"), "node 3: 'skip_connect~3' is not 'op~i'"),
    (NB201_ARCH1.replace("|avg_pool_3x3~1|", "|"), "node 2: .* needs 2 input"),
    (NB201_ARCH1.replace("avg_pool_3x3~1", "avg_pool_3x3~0"), "input 0 appears twice"),
])
def test_nb201_malformed_strings(nb201, text, message):
    with pytest.raises(ArchError, match=message):
        nb201.decode(text)


def test_nb201_input_sizes():
    with pytest.raises(SpaceError, match="multiple of 4"):
        spaces.get("nb201", input_size=30)
    assert spaces.get("nb201", input_size=16, num_classes=120).layers[0].in_hw == 16


def test_nb201_crossover_mixes_edges(nb201):
    rng = random.Random(0)
    a, b = nb201.decode("|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"), nb201.from_index(1)
    child = nb201.crossover(a, b, rng)
    assert all(c in (x, y) for c, x, y in zip(child.choices, a.choices, b.choices))
    assert len({nb201.crossover(a, b, rng) for _ in range(30)}) > 8


# ---- NAG --------------------------------------------------------------------------------------------
def cell(entries, outputs):
    """CellGraph from [(op index, preds), ...]."""
    return CellGraph(tuple(tuple(p) for _, p in entries), tuple(op for op, _ in entries), tuple(outputs))


@pytest.fixture(scope="module")
def nag():
    return spaces.get("nag", input_size=16, width_mult=0.3)


def raw_cell(edges, ops=None):
    cfg = [0] * (len(EDGES) + len(COMPUTE))
    for e in edges:
        cfg[EDGES.index(e)] = 1
    for j, op in (ops or {}).items():
        cfg[len(EDGES) + j] = op
    return tuple(cfg)


def test_nag_pruning_and_packing():
    # vertex 3 reads input 0 but feeds nothing; vertex 5 is unreachable from the inputs; vertex 6 is used.
    raw = raw_cell([(0, 3), (5, 6), (1, 6), (6, 9), (0, 9)], {4: 2, 1: 1})
    g = canonical(raw)
    assert g == CellGraph(((1,),), (2,), (0, 2))  # vertex 6 packed to 2, keeping its op (avg_pool)
    assert canonical(g.to_config()) == g
    # nothing reaches the output: repaired to the smallest valid cell
    assert canonical(raw_cell([(0, 2), (2, 3)])) == CellGraph(((1,),), (0,), (2,))


def test_nag_graph_count_matches_brute_force():
    def brute(size):
        states = 2 + size
        total = 0
        pred_choices = [[p for r in range(1, j + 3) for p in itertools.combinations(range(j + 2), r)]
                        for j in range(size)]
        for preds in itertools.product(*pred_choices):
            for r in range(1, states + 1):
                for outs in itertools.combinations(range(states), r):
                    g = CellGraph(preds, (0,) * size, outs)
                    total += all(g.consumers(v) for v in range(2, states))
        return total

    assert [_count_graphs(k) for k in (1, 2, 3)] == [brute(k) for k in (1, 2, 3)] and _count_graphs(1) == 12


def test_nag_strings_round_trip_and_errors(nag):
    text = "sep_conv_3x3~0,1|max_pool_3x3~1,2|out~2,3+identity~0|avg_pool_3x3~0,2|out~0,3"
    arch = nag.decode(text)
    assert nag.encode(arch) == text
    for bad, message in [
        (text.replace("max_pool_3x3", "max_pool_5x5"), "unknown op 'max_pool_5x5' \\(did you mean 'max_pool_3x3'"),
        ("sep_conv_3x3~0,1|max_pool_3x3~1|out~3+" + text.split("+")[1], "vertex 2 feeds nothing"),
        (text.replace("~1,2|out", "~1,3|out"), "vertex 3: inputs '1,3' must be states 0..2"),
        (text.split("+")[0], "joined by '\\+'"),
        (text.replace("|out~0,3", ""), "final 'out~"),
    ]:
        with pytest.raises(ArchError, match=message):
            nag.decode(bad)
    with pytest.raises(ArchError, match="not a canonical"):
        nag.validate(nag._arch([raw_cell([(0, 3), (3, 9)]) * 2]))


def test_nag_sampling_mutation_crossover_keep_graphs_valid(nag):
    rng = random.Random(0)
    archs = [nag.sample(rng) for _ in range(30)]
    sizes = set()
    for a in archs:
        b = rng.choice(archs)
        for child in (nag.mutate(a, 0.05, rng), nag.crossover(a, b, rng)):
            nag.validate(child)
            for g in nag.graphs(child):
                assert all(g.consumers(v) for v in range(2, 2 + g.size))
                sizes.add(g.size)
    assert len({nag.crossover(archs[0], archs[1], rng) for _ in range(20)}) > 5
    assert len(sizes) > 1


def test_nag_reduction_cell_strides_and_shapes():
    space = spaces.get("nag", input_size=16, width_mult=0.3, cells_per_stage=1)
    # reduction cell: vertex 2 reads inputs only (stride-2 op), vertex 3 mixes input 0 with vertex 2
    # (input 0 factorized-reduced first); input 1 goes straight to the output (reduced there).
    reduce = cell([(4, (0, 1)), (0, (0, 2))], (1, 3))
    normal = cell([(0, (0, 1))], (2,))
    arch = space._arch([graph_config(normal, reduce)])
    net = space.subnet(arch)
    red = net.layers[0].cells[1]
    assert red.ops[0].__class__.__name__ == "FactorizedReduce"  # identity at stride 2
    assert set(red.in_reduces) == {"1_0"} and set(red.out_reduces) == {"1"}
    assert net(torch.randn(2, 3, 16, 16)).shape == (2, 10)
    feats = []
    net.layers[0].cells[1].register_forward_hook(lambda m, i, o: feats.append(o.shape))
    net(torch.randn(1, 3, 16, 16))
    assert feats[0] == (1, space.channels * 2, 8, 8)


def test_nag_expected_relaxation_is_smooth_and_in_range(nag):
    cm = nag.cost_model()
    lo, hi = cm.range("macs")
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        logits = [torch.randn(len(p.options), generator=gen, dtype=torch.float64, requires_grad=True)
                  for p in nag.choices]
        exp = cm.expected([l.softmax(-1) for l in logits])["macs"]
        assert lo <= exp.item() <= hi
        exp.backward()
        assert sum(float(l.grad.abs().sum()) for l in logits) > 0


def test_nag_costs_vectorised_on_raw_rows(nag):
    rng = np.random.default_rng(0)
    raw = rng.integers(0, [len(p.options) for p in nag.choices], size=(20, len(nag.choices)))
    batch = nag.cost_model().costs(raw)["params"]
    single = [nag.cost_model().cost(nag.repair(r.tolist()))["params"] for r in raw]
    assert batch.tolist() == single


# ---- supernets in the trainer ----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["nb201", "nag"])
def test_cell_supernets_train_with_uniform_strategy_and_mixture(name, tmp_path):
    from flexnas.train import TrainConfig, Trainer
    from tests.train.toydata import random_batches

    space = spaces.get(name, input_size=8, num_classes=10, width_mult=0.25)
    net = space.supernet()
    before = [p.detach().clone() for p in net.parameters()]
    cfg = TrainConfig(epochs=1, lr=0.05, amp=False, channels_last=False, log_every_steps=1000)
    final = Trainer(space, net, random_batches(n=48, batch_size=16), cfg, tmp_path, "cpu", seed=0,
                    progress=False).fit()
    assert final["global_step"] == 3
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))
    # the mixture forward (what differentiable strategies use) reaches every choice point's logits
    logits = [torch.zeros(len(p.options), requires_grad=True) for p in space.choices]
    net.train()(torch.randn(4, 3, 8, 8), [l.softmax(-1) for l in logits]).square().sum().backward()
    with_grad = sum(l.grad is not None and float(l.grad.abs().sum()) > 0 for l in logits)
    assert with_grad >= 0.9 * len(logits)
