"""Exact costs of NAG's graph cells, with the `CostModel` interface (cost, costs, range, extreme,
expected) so searchers and generators run unchanged.

Per-choice-point tables cannot work here: whether a vertex costs anything depends on whether it lies
on an input->output path, its stride on whether it has a computing input, and the output conv's
width on how many states are concatenated. Instead each cell position's building blocks (input
calibration, every op at stride 1 and 2, FactorizedReduce, the output 1x1 conv for k = 1..9 states)
are counted once on the real modules (meta device), and a cell's cost is the sum over the modules its
canonical graph instantiates. Normal positions share one graph, so their block tables are summed
once. `cost` is exact (tests compare it with hook counts of built subnets).

`expected(probs)` is a relaxation, not the exact expectation (which needs the distribution of
reachability over 2^44 edge sets): reachability, "has a computing input" and "state reaches the
output" are evaluated with soft-logic (`1 - prod(1 - p)`) as if independent. It is differentiable,
and equal to `cost` at one-hot probabilities of a canonical arch.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

import numpy as np
import torch

from flexnas.arch import Arch
from flexnas.cost.counter import count
from flexnas.errors import ConstraintError

if TYPE_CHECKING:
    from flexnas.spaces.nag import CellGraph, NAGSpace

METRICS = ("macs", "params")


@dataclass
class _Blocks:
    """Costs of one cell kind's building blocks, summed over that kind's positions; arrays hold one
    value per metric."""

    pre: np.ndarray  # (2, M): calibration of input 0, 1
    op: np.ndarray  # (ops, 3, M): op at stride 1 / 2 (index 0 unused)
    reduce: np.ndarray  # (M,): one FactorizedReduce(C, C) at the cell's input size
    final: np.ndarray  # (10, M): output ReLU-Conv-BN for k concatenated states (index 0 unused)

    def cell(self, g: "CellGraph", reduction: bool) -> np.ndarray:
        total = sum((self.pre[i] for i in (0, 1) if g.uses_input(i)), np.zeros_like(self.reduce))
        for j, (preds, op) in enumerate(zip(g.preds, g.ops)):
            pure = g.pure(j)
            total = total + self.op[op, 2 if reduction and pure else 1]
            if reduction and not pure:
                total = total + self.reduce * sum(p < 2 for p in preds)
        if reduction:
            total = total + self.reduce * sum(p < 2 for p in g.outputs)
        return total + self.final[len(g.outputs)]


class NAGCostModel:
    def __init__(self, space: "NAGSpace", blocks: tuple[_Blocks, _Blocks], constants: dict[str, float]) -> None:
        self.space = space
        self.metrics = METRICS
        self.constants = dict(constants)
        self._blocks = blocks  # (normal, reduction)
        self._const = np.array([constants[m] for m in METRICS])

    @classmethod
    def measure(cls, space: "NAGSpace") -> "NAGCostModel":
        from flexnas.ops.cells import FactorizedReduce, ReLUConvBN, nag_op
        from flexnas.spaces.nag import COMPUTE
        from flexnas.supernet.cells import nag_pre

        def vec(module: torch.nn.Module, shape: tuple[int, ...]) -> np.ndarray:
            c = count(module, shape)
            return np.array([c[m] for m in METRICS], dtype=np.float64)

        n_ops, m = len(space.ops), len(METRICS)
        blocks = [_Blocks(np.zeros((2, m)), np.zeros((n_ops, 3, m)), np.zeros(m), np.zeros((len(COMPUTE) + 3, m)))
                  for _ in (0, 1)]
        with torch.device("meta"):
            stem = vec(space._stem(), (3, space.input_size, space.input_size))
            last = space.cell_specs()[-1]
            head = vec(space._head(), (last.channels, last.out_hw, last.out_hw))
            for spec in space.cell_specs():
                b, c, hw = blocks[spec.reduction], spec.channels, spec.hw1
                b.pre[0] += vec(nag_pre(spec, 0), (spec.c0, spec.hw0, spec.hw0))
                b.pre[1] += vec(nag_pre(spec, 1), (spec.c1, spec.hw1, spec.hw1))
                for k, op in enumerate(space.ops):
                    b.op[k, 1] += vec(nag_op(op, c, 1), (c, spec.out_hw, spec.out_hw))
                    if spec.reduction:
                        b.op[k, 2] += vec(nag_op(op, c, 2), (c, hw, hw))
                if spec.reduction:
                    b.reduce += vec(FactorizedReduce(c, c), (c, hw, hw))
                for k in range(1, len(COMPUTE) + 3):
                    b.final[k] += vec(ReLUConvBN(k * c, c, 1), (k * c, spec.out_hw, spec.out_hw))
        const = stem + head
        return cls(space, (blocks[0], blocks[1]), {mt: float(v) for mt, v in zip(METRICS, const)})

    # ---- exact costs ----------------------------------------------------------------------------
    def _check_metric(self, metric: str) -> None:
        if metric not in self.metrics:
            raise ConstraintError(f"unknown metric '{metric}'; this cost model has {list(self.metrics)}")

    def _vector(self, choices: Sequence[int]) -> np.ndarray:
        normal, reduce = self.space.graphs(choices)
        return self._const + self._blocks[0].cell(normal, False) + self._blocks[1].cell(reduce, True)

    def cost(self, arch: Arch) -> dict[str, float]:
        v = self._vector(arch.choices)
        return {m: float(x) for m, x in zip(self.metrics, v)}

    def costs(self, archs: Union[Sequence[Arch], np.ndarray]) -> dict[str, np.ndarray]:
        """Costs of many archs (Arch list or raw int array; raw rows cost what they repair to)."""
        rows = archs.tolist() if isinstance(archs, np.ndarray) else [a.choices for a in archs]
        out = np.array([self._vector(tuple(r)) for r in rows]).reshape(len(rows), len(self.metrics))
        return {m: out[:, i] for i, m in enumerate(self.metrics)}

    def _cell_extremes(self, reduction: bool, metric: str, largest: bool) -> "CellGraph":
        """Largest: every vertex reads every earlier state and feeds the output, each with its
        costliest op at its stride (every block then appears as often as it can). Smallest: one
        vertex reading one input, its cheapest op, alone at the output (any valid cell holds at least
        one used input, one op and one concatenated state)."""
        from flexnas.spaces.nag import COMPUTE, CellGraph

        b, i = self._blocks[reduction], self.metrics.index(metric)
        if largest:
            n = len(COMPUTE)
            preds = tuple(tuple(range(j + 2)) for j in range(n))
            ops = tuple(int(np.argmax(b.op[:, 2 if reduction and j == 0 else 1, i])) for j in range(n))
            return CellGraph(preds, ops, tuple(range(n + 2)))
        candidates = [CellGraph(((s,),), (op,), (2,)) for s in (0, 1) for op in range(len(self.space.ops))]
        return min(candidates, key=lambda g: (b.cell(g, reduction)[i], g.preds, g.ops))

    def extreme(self, metric: str, largest: bool) -> Arch:
        self._check_metric(metric)
        normal, reduce = (self._cell_extremes(r, metric, largest) for r in (False, True))
        return Arch(self.space.name, normal.to_config() + reduce.to_config())

    def range(self, metric: str = "macs") -> tuple[float, float]:
        self._check_metric(metric)
        return (self.cost(self.extreme(metric, False))[metric], self.cost(self.extreme(metric, True))[metric])

    # ---- differentiable relaxation --------------------------------------------------------------
    def _cell_expected(self, probs: Sequence[torch.Tensor], b: _Blocks, reduction: bool,
                       like: torch.Tensor) -> torch.Tensor:
        from flexnas.spaces.nag import COMPUTE, EDGE_INDEX, EDGES, OUT

        def t(a: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(a, dtype=like.dtype, device=like.device)

        p = {e: probs[EDGE_INDEX[e]][..., 1] for e in EDGES}
        one = torch.ones_like(p[(0, 2)])

        def any_of(terms: list[torch.Tensor]) -> torch.Tensor:
            return 1 - torch.prod(torch.stack([1 - x for x in terms]), 0) if terms else torch.zeros_like(one)

        fwd = {0: one, 1: one}
        for v in range(2, OUT + 1):
            fwd[v] = any_of([p[(u, v)] * fwd[u] for u in range(v)])
        bwd = {OUT: one}
        for v in range(OUT - 1, -1, -1):
            bwd[v] = any_of([p[(v, w)] * bwd[w] for w in range(max(v + 1, 2), OUT + 1)])
        alive = {v: (one if v < 2 else fwd[v] * bwd[v]) for v in range(OUT)}
        alive[OUT] = one
        live = {(u, v): p[(u, v)] * alive[u] * alive[v] for u, v in EDGES}  # edge of the pruned graph

        metrics = len(self.metrics)
        total = like.new_zeros(one.shape + (metrics,))
        for i in (0, 1):
            total = total + any_of([live[(i, v)] for v in range(2, OUT + 1)])[..., None] * t(b.pre[i])
        for j, v in enumerate(COMPUTE):
            q = probs[len(EDGES) + j]
            op1 = (q[..., :, None] * t(b.op[:, 1])).sum(-2)
            if not reduction:
                total = total + alive[v][..., None] * op1
                continue
            inner = any_of([live[(u, v)] for u in range(2, v)])
            op2 = (q[..., :, None] * t(b.op[:, 2])).sum(-2)
            total = total + (alive[v] * (1 - inner))[..., None] * op2 + (alive[v] * inner)[..., None] * op1
            total = total + (inner * (live[(0, v)] + live[(1, v)]))[..., None] * t(b.reduce)
        k = sum(live[(u, OUT)] for u in range(OUT))
        if reduction:
            total = total + (live[(0, OUT)] + live[(1, OUT)])[..., None] * t(b.reduce)
        per_state = t(b.final[2] - b.final[1])
        return total + t(b.final[1] - (b.final[2] - b.final[1])) + k[..., None] * per_state

    def expected(self, probs: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Differentiable cost relaxation (see the module docstring); exact on one-hot canonical archs."""
        from flexnas.spaces.nag import CELL_POINTS

        like = probs[0]
        total = self._cell_expected(probs[:CELL_POINTS], self._blocks[0], False, like)
        total = total + self._cell_expected(probs[CELL_POINTS:], self._blocks[1], True, like)
        return {m: total[..., i] + self.constants[m] for i, m in enumerate(self.metrics)}

