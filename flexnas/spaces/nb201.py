"""NAS-Bench-201: one 4-node cell (6 edges, 5 ops each) repeated in a fixed ResNet-like macro.

The searchable part is one cell shared by all 15 cells, so the space has a single `LayerSpec` (the
whole body: 3 stages of `cells_per_stage` cells with residual reductions between them) owning the 6
edge choice points. Strings use the benchmark's own format, and `index` / `from_index` use the
benchmark's architecture indices, so results join with published tables:

    |nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|
     node 1 <- 0      node 2 <- 0, 1                  node 3 <- 0, 1, 2
"""
from __future__ import annotations

import random
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from torch import nn

from flexnas.arch import Arch
from flexnas.cost.counter import count
from flexnas.errors import ArchError, SpaceError, did_you_mean
from flexnas.ops.cells import NB201_OPS, BNReLUPoolHead, ResidualReduction, nb201_op
from flexnas.spaces.base import ChoicePoint, Config, LayerSpec, SearchSpace, check_cell_input

EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))  # (to node, from node), the string's order
NUM_ARCHS = len(NB201_OPS) ** len(EDGES)


@lru_cache(maxsize=1)
def _benchmark_order() -> tuple[list[int], dict[int, int]]:
    """index -> lexicographic code and back. The benchmark enumerated every cell with edges in string
    order and ops in NB201_OPS order (last edge fastest), then shuffled the list with Python's
    `random.seed(88)`; `random.shuffle` depends only on the length, so shuffling the codes gives the
    same permutation (checked against published indices in tests/spaces/test_cells.py)."""
    codes = list(range(NUM_ARCHS))
    random.Random(88).shuffle(codes)
    return codes, {code: i for i, code in enumerate(codes)}


class NB201Cell(nn.Module):
    """A standalone cell: node j = sum of its incoming edges' outputs; the cell returns node 3."""

    def __init__(self, edges: list[nn.Module], ops: tuple[str, ...]) -> None:
        super().__init__()
        self.edges = nn.ModuleList(edges)
        self.ops = tuple(ops)

    def forward(self, x: Any) -> Any:
        return cell_forward(x, lambda e, h: None if self.ops[e] == "none" else self.edges[e](h))


def cell_forward(x: Any, edge: Callable[[int, Any], Any]) -> Any:
    """Run the 4-node DAG; `edge(e, h)` is edge e's output on h, or None for a zero edge."""
    nodes = [x]
    for j in (1, 2, 3):
        terms = [edge(e, nodes[i]) for e, (to, i) in enumerate(EDGES) if to == j]
        terms = [t for t in terms if t is not None]
        nodes.append(sum(terms[1:], terms[0]) if terms else x.mul(0.0))
    return nodes[3]


class NB201Space(SearchSpace):
    """NAS-Bench-201 (Dong & Yang, ICLR 2020). `width_mult` scales the 16-channel base width (tests
    use narrow variants); `cells_per_stage` is 5 in the benchmark. Input sizes must be multiples of 4
    (two stride-2 reductions whose pooled shortcut must match the conv path) and at least 8, so the
    last stage keeps a 2x2 map for its 3x3 ops."""

    name = "nb201"
    ops = NB201_OPS

    def __init__(self, input_size: int = 32, num_classes: int = 10, width_mult: float = 1.0,
                 cells_per_stage: int = 5) -> None:
        if isinstance(cells_per_stage, bool) or not isinstance(cells_per_stage, int) or cells_per_stage < 1:
            raise SpaceError(f"nb201: cells_per_stage must be a positive integer, got {cells_per_stage!r}")
        self.cells_per_stage = cells_per_stage
        super().__init__(input_size, num_classes, width_mult)

    @property
    def channels(self) -> int:
        return max(1, round(16 * self.width_mult))

    # ---- structure ------------------------------------------------------------------------------
    def _build_layers(self) -> list[LayerSpec]:
        check_cell_input("nb201", self.input_size, "two stride-2 reductions with a 2x2 pooled shortcut")
        points = tuple(ChoicePoint(f"edge{to}<-{i}", self.ops) for to, i in EDGES)
        c = self.channels
        return [LayerSpec(0, c, 4 * c, 4, self.input_size, points)]

    def _stem_out(self) -> tuple[int, int]:
        return self.channels, self.input_size

    def _stem(self) -> nn.Module:
        c = self.channels
        return nn.Sequential(nn.Conv2d(3, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c))

    def _head(self) -> nn.Module:
        return BNReLUPoolHead(4 * self.channels, self.num_classes)

    def stage_plan(self) -> list[tuple[str, int]]:
        """The body in order: ('cell', C) or ('reduce', C_out)."""
        c, plan = self.channels, []
        for stage in range(3):
            if stage:
                plan.append(("reduce", c * 2 ** stage))
            plan += [("cell", c * 2 ** stage)] * self.cells_per_stage
        return plan

    def _subnet_layer(self, layer: LayerSpec, config: Config, **options: Any) -> nn.Module:
        if options:
            raise SpaceError(f"nb201: standalone subnets take no options, got {sorted(options)}")
        ops = tuple(self.ops[c] for c in config)
        body: list[nn.Module] = []
        for kind, c in self.stage_plan():
            if kind == "reduce":
                body.append(ResidualReduction(c // 2, c))
            else:
                body.append(NB201Cell([nb201_op(op, c) for op in ops], ops))
        return nn.Sequential(*body)

    def _supernet_layer(self, layer: LayerSpec) -> nn.Module:
        from flexnas.supernet.cells import NB201Body

        return NB201Body(self.stage_plan(), self.ops)

    def _layer_cost(self, layer: LayerSpec, config: Config,
                    measure: Callable[[Config], dict[str, float]]) -> dict[str, float]:
        """Every edge maps C -> C at its stage's fixed resolution, so an edge's op costs the same
        whatever the other edges hold: the body costs the all-`none` body (the reductions) plus, per
        edge, its op counted once per stage and multiplied by the cells in that stage. The cost test
        checks the sums against hook counts of whole subnets."""
        if "_op_units" not in self.__dict__:
            units: dict[int, dict[str, float]] = {}
            for k, op in enumerate(self.ops):
                totals: dict[str, float] = {}
                for stage in range(3):
                    c, hw = self.channels * 2 ** stage, -(-self.input_size // 2 ** stage)
                    for m, v in count(nb201_op(op, c), (c, hw, hw)).items():
                        totals[m] = totals.get(m, 0.0) + v * self.cells_per_stage
                units[k] = totals
            self.__dict__["_op_units"] = units
        units = self.__dict__["_op_units"]
        out = dict(measure((0,) * len(EDGES)))
        for c in config:
            for m in out:
                out[m] += units[c][m] - units[0][m]
        return out

    # ---- strings and benchmark indices -------------------------------------------------------------
    def _encode_layer(self, layer: LayerSpec, config: Config) -> str:
        nodes = []
        for j in (1, 2, 3):
            nodes.append("|" + "|".join(f"{self.ops[c]}~{i}" for c, (to, i) in zip(config, EDGES) if to == j) + "|")
        return "+".join(nodes)

    def _decode_layer(self, layer: LayerSpec, token: str) -> Config:
        form = "'|op~0|+|op~0|op~1|+|op~0|op~1|op~2|'"
        nodes = token.split("+")
        if len(nodes) != 3:
            raise ArchError(f"nb201 archs have 3 nodes joined by '+' ({form}), got {len(nodes)} in '{token}'")
        config = [0] * len(EDGES)
        for j, node in enumerate(nodes, start=1):
            if not (node.startswith("|") and node.endswith("|")) or len(node) < 2:
                raise ArchError(f"node {j}: '{node}' must start and end with '|' ({form})")
            entries = node[1:-1].split("|")
            if len(entries) != j:
                raise ArchError(f"node {j}: '{node}' needs {j} input(s) (from nodes 0..{j - 1}), got {len(entries)}")
            seen = set()
            for entry in entries:
                op, sep, src = entry.partition("~")
                if not sep or not src.isdigit() or not 0 <= int(src) < j:
                    raise ArchError(f"node {j}: '{entry}' is not 'op~i' with i in 0..{j - 1}")
                if int(src) in seen:
                    raise ArchError(f"node {j}: input {src} appears twice in '{node}'")
                seen.add(int(src))
                if op not in self.ops:
                    raise ArchError(f"node {j}: unknown op '{op}'{did_you_mean(op, self.ops)}; "
                                    f"allowed: {', '.join(self.ops)}")
                config[EDGES.index((j, int(src)))] = self.ops.index(op)
        return tuple(config)

    def decode(self, text: str) -> Arch:
        if not isinstance(text, str) or not text.strip():
            raise ArchError(f"empty architecture string for space '{self.name}'")
        return self.validate(self._arch([self._decode_layer(self.layers[0], text.strip())]))

    def crossover(self, a: Arch, b: Arch, rng: random.Random) -> Arch:
        """Uniform crossover of edges (the whole space is one cell, so swapping layers would not mix)."""
        return self.repair([x if rng.random() < 0.5 else y for x, y in zip(a.choices, b.choices)])

    def index(self, arch: Arch) -> int:
        """The arch's index in NAS-Bench-201 / NATS-Bench (topology), 0..15624."""
        self.validate(arch)
        code = 0
        for c in arch.choices:
            code = code * len(self.ops) + c
        return _benchmark_order()[1][code]

    def from_index(self, index: int) -> Arch:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < NUM_ARCHS:
            raise ArchError(f"nb201 benchmark indices run 0..{NUM_ARCHS - 1}, got {index!r}")
        code, digits = _benchmark_order()[0][index], []
        for _ in EDGES:
            code, d = divmod(code, len(self.ops))
            digits.append(d)
        return Arch(self.name, tuple(reversed(digits)))

    def all_archs(self) -> list[Arch]:
        """All 15,625 cells in benchmark index order."""
        return [self.from_index(i) for i in range(NUM_ARCHS)]

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, input_size={self.input_size}, "
                f"num_classes={self.num_classes}, width_mult={self.width_mult}, "
                f"cells_per_stage={self.cells_per_stage})")

