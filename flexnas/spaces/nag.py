"""NAG's cell space (Jing, Xu & Zhang, "A Neural Architecture Generator for Efficient Search Space",
Neurocomputing 2021): a normal and a reduction cell, each a DAG of up to 10 vertices in a
NASNet-style CIFAR macro.

Cell: vertices 0 and 1 are the cell inputs (outputs of the cells two and one back), 2..8 compute,
9 is the output. A computing vertex applies one op (sep-conv 3x3/5x5, avg/max pool 3x3, identity)
to the *sum* of its inputs; the output *concatenates* the states wired to it and a 1x1 ReLU-Conv-BN
maps them back to C channels (NAG's one-shot cell), so every cell outputs C channels. In the
reduction cell, a vertex fed only by cell inputs applies its op at stride 2; a vertex that also has a
computing input runs at stride 1 on the halved map, and cell inputs reaching it (or the output) pass
through a FactorizedReduce first.

Encoding (per cell, normal first): the 44 upper-triangular adjacency bits `e{src}>{dst}` of the
10x10 matrix, then the ops of vertices 2..8. Vertices not on an input->output path are pruned (as
NAS-Bench-101's ModelSpec does) and the remaining ones packed to 2, 3, ...; `repair` maps any raw
encoding to that canonical form, so sampling, mutation and crossover always give valid graphs.

Arch string: per cell, one `op~inputs` entry per computing vertex (vertex 2 first), then
`out~inputs`; entries joined by '|', inputs by ',', the two cells by '+':

    sep_conv_3x3~0,1|max_pool_3x3~1,2|out~2,3+identity~0|avg_pool_3x3~0,2|out~0,3
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Optional

from torch import nn

from flexnas.arch import Arch
from flexnas.errors import ArchError, SpaceError, did_you_mean
from flexnas.ops.cells import NAG_OPS, PoolHead
from flexnas.spaces.base import ChoicePoint, Config, LayerSpec, SearchSpace, check_cell_input

NUM_VERTICES = 10
OUT = NUM_VERTICES - 1
COMPUTE = tuple(range(2, OUT))  # vertices that hold an op
EDGES = tuple((src, dst) for dst in range(2, NUM_VERTICES) for src in range(dst))
EDGE_INDEX = {e: i for i, e in enumerate(EDGES)}
CELL_POINTS = len(EDGES) + len(COMPUTE)
KINDS = ("normal", "reduce")


@dataclass(frozen=True)
class CellGraph:
    """A canonical cell: `preds[j]` and `ops[j]` of computing vertex j + 2, `outputs` the states
    concatenated at the output (0, 1 = cell inputs). Every computing vertex is used later."""

    preds: tuple[tuple[int, ...], ...]
    ops: tuple[int, ...]
    outputs: tuple[int, ...]

    @property
    def size(self) -> int:
        return len(self.ops)

    def consumers(self, state: int) -> list[int]:
        """Vertices (OUT for the output) that read `state`."""
        out = [j + 2 for j, p in enumerate(self.preds) if state in p]
        return out + ([OUT] if state in self.outputs else [])

    def uses_input(self, s: int) -> bool:
        return bool(self.consumers(s))

    def pure(self, j: int) -> bool:
        """Vertex j + 2 reads only cell inputs (so a reduction cell runs its op at stride 2)."""
        return all(p < 2 for p in self.preds[j])

    def to_config(self) -> Config:
        cfg = [0] * CELL_POINTS
        for j, preds in enumerate(self.preds):
            for p in preds:
                cfg[EDGE_INDEX[(p, j + 2)]] = 1
            cfg[len(EDGES) + j] = self.ops[j]
        for p in self.outputs:
            cfg[EDGE_INDEX[(p, OUT)]] = 1
        return tuple(cfg)


@lru_cache(maxsize=65536)
def canonical(config: Config) -> CellGraph:
    """Prune vertices not on an input->output path and pack the rest; a raw encoding with no such
    vertex becomes the smallest valid cell (vertex 2 reading input 1, wired to the output)."""
    adj = {e: bool(config[i]) for i, e in enumerate(EDGES)}
    ops = config[len(EDGES):]
    fwd = {0, 1}
    for v in range(2, NUM_VERTICES):
        if any(adj[(u, v)] for u in fwd if u < v):
            fwd.add(v)
    bwd = {OUT}
    for v in range(OUT - 1, 1, -1):
        if any(adj[(v, w)] for w in bwd):
            bwd.add(v)
    active = [v for v in COMPUTE if v in fwd and v in bwd]
    if not active:
        return CellGraph(((1,),), (ops[0],), (2,))
    new = {0: 0, 1: 1, **{v: j + 2 for j, v in enumerate(active)}}
    preds = tuple(tuple(new[u] for u in range(v) if adj[(u, v)] and u in new) for v in active)
    outputs = tuple(new[u] for u in range(OUT) if adj[(u, OUT)] and u in new)
    return CellGraph(preds, tuple(ops[v - 2] for v in active), outputs)


@lru_cache(maxsize=None)
def _count_graphs(size: int) -> int:
    """Canonical wirings with `size` computing vertices: each vertex reads a non-empty subset of the
    earlier states, the output a non-empty subset of all states, and each computing vertex is read by
    a later vertex or the output. Dynamic programming from the last vertex back, over which
    computing vertices are already read."""
    states = 2 + size
    # dp[mask]: ways to choose the output set and the inputs of vertices > current, leaving `mask`
    # (computing vertices, bit j = vertex j + 2) read.
    dp: dict[int, int] = {}
    for out_set in range(1, 1 << states):
        mask = out_set >> 2
        dp[mask] = dp.get(mask, 0) + 1
    for j in range(size - 1, -1, -1):
        nxt: dict[int, int] = {}
        for mask, ways in dp.items():
            if not mask >> j & 1:
                continue  # vertex j + 2 is read by nobody
            for preds in range(1, 1 << (2 + j)):
                m = mask | (preds >> 2)
                nxt[m] = nxt.get(m, 0) + ways
        dp = nxt
    return sum(dp.values())


@dataclass(frozen=True)
class CellSpec:
    """Shapes around one cell position: its inputs (channels, size), its width and kind."""

    index: int
    reduction: bool
    c0: int
    hw0: int
    c1: int
    hw1: int
    channels: int

    @property
    def out_hw(self) -> int:
        return self.hw1 // 2 if self.reduction else self.hw1


class NAGSpace(SearchSpace):
    """NAG's CIFAR macro: stem conv 3x3 (3C) + BN, 3 stages of `cells_per_stage` normal cells with a
    reduction cell between stages (C doubles), global pool + linear. Defaults are NAG's one-shot
    setting (C = 20, 3 cells per stage); `width_mult` scales C (kept even for FactorizedReduce)."""

    name = "nag"
    ops = NAG_OPS

    def __init__(self, input_size: int = 32, num_classes: int = 10, width_mult: float = 1.0,
                 channels: int = 20, cells_per_stage: int = 3) -> None:
        for key, v in (("channels", channels), ("cells_per_stage", cells_per_stage)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise SpaceError(f"nag: {key} must be a positive integer, got {v!r}")
        self.base_channels = channels
        self.cells_per_stage = cells_per_stage
        super().__init__(input_size, num_classes, width_mult)

    @property
    def channels(self) -> int:
        return max(2, 2 * round(self.base_channels * self.width_mult / 2))

    # ---- structure ------------------------------------------------------------------------------
    def _build_layers(self) -> list[LayerSpec]:
        check_cell_input("nag", self.input_size, "two reduction cells whose branches must agree on the halved size")
        points = []
        for kind in KINDS:
            points += [ChoicePoint(f"{kind}.e{s}>{d}", ("0", "1")) for s, d in EDGES]
            points += [ChoicePoint(f"{kind}.op{v}", self.ops) for v in COMPUTE]
        c = self.channels
        return [LayerSpec(0, 3 * c, 4 * c, 4, self.input_size, tuple(points))]

    def cell_specs(self) -> list[CellSpec]:
        n, c = self.cells_per_stage, self.channels
        reductions = {n, 2 * n + 1}
        prev = [(3 * c, self.input_size), (3 * c, self.input_size)]
        specs = []
        for i in range(3 * n + 2):
            if i in reductions:
                c *= 2
            spec = CellSpec(i, i in reductions, prev[0][0], prev[0][1], prev[1][0], prev[1][1], c)
            specs.append(spec)
            prev = [prev[1], (c, spec.out_hw)]
        return specs

    def _stem_out(self) -> tuple[int, int]:
        return 3 * self.channels, self.input_size

    def _stem(self) -> nn.Module:
        c = 3 * self.channels
        return nn.Sequential(nn.Conv2d(3, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c))

    def _head(self) -> nn.Module:
        return PoolHead(4 * self.channels, self.num_classes)

    def graphs(self, arch_or_config: Any) -> tuple[CellGraph, CellGraph]:
        """(normal, reduction) canonical cell graphs of an arch or a raw choice tuple."""
        choices = arch_or_config.choices if isinstance(arch_or_config, Arch) else tuple(arch_or_config)
        return canonical(tuple(choices[:CELL_POINTS])), canonical(tuple(choices[CELL_POINTS:]))

    def _subnet_layer(self, layer: LayerSpec, config: Config, **options: Any) -> nn.Module:
        from flexnas.supernet.cells import NAGBody, NAGCell

        if options:
            raise SpaceError(f"nag: standalone subnets take no options, got {sorted(options)}")
        graphs = self.graphs(config)
        return NAGBody([NAGCell(graphs[s.reduction], s, self.ops) for s in self.cell_specs()])

    def _supernet_layer(self, layer: LayerSpec) -> nn.Module:
        from flexnas.supernet.cells import NAGMixedBody

        return NAGMixedBody(self.cell_specs(), self.ops)

    # ---- canonical form, variation --------------------------------------------------------------
    def _repair_layer(self, layer: LayerSpec, config: Config) -> Config:
        normal, reduce = self.graphs(config)
        return normal.to_config() + reduce.to_config()

    def _check_layer(self, layer: LayerSpec, config: Config) -> None:
        if self._repair_layer(layer, config) != tuple(config):
            raise ArchError("nag: choices are not a canonical cell pair (a vertex off every input->output "
                            "path, or computing vertices not packed from 2); pass them through space.repair")

    def size(self) -> float:
        per_cell = sum(_count_graphs(k) * len(self.ops) ** k for k in range(1, len(COMPUTE) + 1))
        return float(per_cell) ** 2

    def crossover(self, a: Arch, b: Arch, rng: random.Random) -> Arch:
        """Per cell and per vertex (the output included), take the vertex's inputs and op from one
        parent; the child is repaired to a valid canonical pair."""
        out = list(a.choices)
        for k in range(len(KINDS)):
            base = k * CELL_POINTS
            for dst in range(2, NUM_VERTICES):
                if rng.random() < 0.5:
                    idx = [base + EDGE_INDEX[(s, dst)] for s in range(dst)]
                    if dst != OUT:
                        idx.append(base + len(EDGES) + dst - 2)
                    for i in idx:
                        out[i] = b.choices[i]
        return self.repair(out)

    # ---- strings --------------------------------------------------------------------------------
    def _encode_cell(self, g: CellGraph) -> str:
        entries = [f"{self.ops[op]}~{','.join(map(str, p))}" for op, p in zip(g.ops, g.preds)]
        return "|".join(entries + [f"out~{','.join(map(str, g.outputs))}"])

    def _encode_layer(self, layer: LayerSpec, config: Config) -> str:
        return "+".join(self._encode_cell(g) for g in self.graphs(config))

    def _decode_cell(self, kind: str, text: str) -> CellGraph:
        form = "'op~0,1|op~1,2|out~2,3' (vertex 2 first; inputs are earlier vertices, 0 and 1 the cell inputs)"
        entries = text.split("|")
        if len(entries) < 2 or not entries[-1].startswith("out~"):
            raise ArchError(f"{kind} cell '{text}': needs at least one vertex and a final 'out~...' entry, e.g. {form}")
        if len(entries) - 1 > len(COMPUTE):
            raise ArchError(f"{kind} cell: {len(entries) - 1} computing vertices, at most {len(COMPUTE)}")
        preds, ops = [], []
        for j, entry in enumerate(entries):
            vertex = "out" if j == len(entries) - 1 else f"vertex {j + 2}"
            op, sep, src = entry.partition("~")
            if not sep or not src:
                raise ArchError(f"{kind} cell, {vertex}: '{entry}' is not 'op~inputs', e.g. {form}")
            if j < len(entries) - 1:
                if op not in self.ops:
                    raise ArchError(f"{kind} cell, {vertex}: unknown op '{op}'{did_you_mean(op, self.ops)}; "
                                    f"allowed: {', '.join(self.ops)}")
                ops.append(self.ops.index(op))
            elif op != "out":
                raise ArchError(f"{kind} cell: the last entry must be 'out~...', got '{entry}'")
            items = src.split(",")
            limit = j + 2
            if not all(s.isdigit() and int(s) < limit for s in items):
                raise ArchError(f"{kind} cell, {vertex}: inputs '{src}' must be states 0..{limit - 1} "
                                f"(0, 1 the cell inputs, 2.. earlier vertices) joined by ','")
            nums = tuple(sorted(int(s) for s in items))
            if len(set(nums)) != len(nums):
                raise ArchError(f"{kind} cell, {vertex}: input listed twice in '{src}'")
            preds.append(nums)
        g = CellGraph(tuple(preds[:-1]), tuple(ops), preds[-1])
        for v in range(2, 2 + g.size):
            if not g.consumers(v):
                raise ArchError(f"{kind} cell: vertex {v} feeds nothing (wire it to a later vertex or to out)")
        return g

    def _decode_layer(self, layer: LayerSpec, token: str) -> Config:
        cells = token.split("+")
        if len(cells) != 2:
            raise ArchError(f"nag archs are a normal and a reduction cell joined by '+', got {len(cells)} part(s)")
        normal, reduce = (self._decode_cell(k, c.strip()) for k, c in zip(KINDS, cells))
        return normal.to_config() + reduce.to_config()

    def decode(self, text: str) -> Arch:
        if not isinstance(text, str) or not text.strip():
            raise ArchError(f"empty architecture string for space '{self.name}'")
        return self.validate(self._arch([self._decode_layer(self.layers[0], text.strip())]))

    def cost_model(self) -> Any:
        if "_cost_model" not in self.__dict__:
            from flexnas.cost.graph import NAGCostModel

            self.__dict__["_cost_model"] = NAGCostModel.measure(self)
        return self.__dict__["_cost_model"]

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, input_size={self.input_size}, "
                f"num_classes={self.num_classes}, width_mult={self.width_mult}, channels={self.base_channels}, "
                f"cells_per_stage={self.cells_per_stage})")


def graph_config(normal: CellGraph, reduce: Optional[CellGraph] = None) -> Config:
    """Raw choices of a (normal, reduction) pair; the reduction cell defaults to the normal one."""
    return normal.to_config() + (reduce or normal).to_config()
