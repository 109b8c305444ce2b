"""Supernet bodies of the cell-based spaces: edge-level (NB201) and vertex-level (NAG) mixed ops.

Each body is one `ChoiceLayer` (the whole stack of cells, since every cell of a kind shares one cell
arch): `forward_path` runs one cell arch, `forward_mixture` the DARTS-style weighted sum of every
candidate op on every edge/vertex, and `extract` returns the standalone body with copied weights.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from flexnas.ops.cells import FactorizedReduce, ReLUConvBN, ResidualReduction, nag_op, nb201_op
from flexnas.spaces.nb201 import EDGES, NB201Cell, cell_forward
from flexnas.supernet.layers import ChoiceLayer

if TYPE_CHECKING:
    from flexnas.spaces.nag import CellGraph, CellSpec


class NB201MixedCell(nn.Module):
    """Every candidate op on every edge, with independent weights (as in the benchmark's one-shot
    baselines); candidate `none` is a parameter-free Zero kept for a uniform layout."""

    def __init__(self, channels: int, ops: Sequence[str]) -> None:
        super().__init__()
        self.ops = tuple(ops)
        self.edges = nn.ModuleList(nn.ModuleList(nb201_op(op, channels) for op in ops) for _ in EDGES)

    def forward_path(self, x: torch.Tensor, config: Sequence[int]) -> torch.Tensor:
        return cell_forward(x, lambda e, h: None if self.ops[config[e]] == "none" else self.edges[e][config[e]](h))

    def forward_mixture(self, x: torch.Tensor, probs: Sequence[torch.Tensor]) -> torch.Tensor:
        def edge(e: int, h: torch.Tensor) -> torch.Tensor | None:
            # `none` adds zero whatever its weight (its gradient comes through the softmax).
            terms = [probs[e][k] * op(h) for k, op in enumerate(self.edges[e]) if self.ops[k] != "none"]
            return sum(terms[1:], terms[0]) if terms else None

        return cell_forward(x, edge)

    def extract(self, config: Sequence[int]) -> NB201Cell:
        ops = tuple(self.ops[c] for c in config)
        return NB201Cell([copy.deepcopy(self.edges[e][c]) for e, c in enumerate(config)], ops)


class NB201Body(ChoiceLayer):
    """The NAS-Bench-201 body: mixed cells with fixed residual reductions between the stages."""

    def __init__(self, plan: Sequence[tuple[str, int]], ops: Sequence[str]) -> None:
        super().__init__()
        self.option_counts = (len(ops),) * len(EDGES)
        self.items = nn.ModuleList(ResidualReduction(c // 2, c) if kind == "reduce" else NB201MixedCell(c, ops)
                                   for kind, c in plan)

    def forward_path(self, x: torch.Tensor, config: tuple[int, ...]) -> torch.Tensor:
        for item in self.items:
            x = item.forward_path(x, config) if isinstance(item, NB201MixedCell) else item(x)
        return x

    def forward_mixture(self, x: torch.Tensor, probs: Sequence[torch.Tensor]) -> torch.Tensor:
        for item in self.items:
            x = item.forward_mixture(x, probs) if isinstance(item, NB201MixedCell) else item(x)
        return x

    def extract(self, config: tuple[int, ...]) -> nn.Module:
        return nn.Sequential(*(item.extract(config) if isinstance(item, NB201MixedCell) else copy.deepcopy(item)
                               for item in self.items))


# ---- NAG ------------------------------------------------------------------------------------------
def nag_pre(spec: "CellSpec", which: int) -> nn.Module:
    """Calibrates cell input `which` to C channels at the cell's resolution (NAG's MaybeCalibrateSize)."""
    c_in, hw = (spec.c0, spec.hw0) if which == 0 else (spec.c1, spec.hw1)
    if hw != spec.hw1:
        return FactorizedReduce(c_in, spec.channels)
    return ReLUConvBN(c_in, spec.channels, 1) if c_in != spec.channels else nn.Identity()


def nag_cell_forward(g: "CellGraph", reduction: bool, s0: torch.Tensor, s1: torch.Tensor,
                     cell: "_NAGModules") -> torch.Tensor:
    """One cell on one canonical graph; `cell` supplies the modules (standalone or supernet slots)."""
    states: list[torch.Tensor | None] = [cell.pre(i, s) if g.uses_input(i) else None for i, s in enumerate((s0, s1))]
    for j, (preds, op) in enumerate(zip(g.preds, g.ops)):
        pure = g.pure(j)
        terms = [cell.in_reduce(j, p, states[p]) if reduction and not pure and p < 2 else states[p] for p in preds]
        h = sum(terms[1:], terms[0])  # type: ignore[arg-type]
        states.append(cell.op(j, op, 2 if reduction and pure else 1, h))
    outs = [cell.out_reduce(p, states[p]) if reduction and p < 2 else states[p] for p in g.outputs]
    return cell.final(g.outputs, torch.cat(outs, 1))  # type: ignore[arg-type]


class _NAGModules(Protocol):
    """What `nag_cell_forward` needs from a cell: its modules, looked up by role."""

    def pre(self, i: int, x: torch.Tensor) -> torch.Tensor: ...
    def in_reduce(self, j: int, p: int, x: torch.Tensor) -> torch.Tensor: ...
    def out_reduce(self, p: int, x: torch.Tensor) -> torch.Tensor: ...
    def op(self, j: int, op: int, stride: int, x: torch.Tensor) -> torch.Tensor: ...
    def final(self, outputs: Sequence[int], x: torch.Tensor) -> torch.Tensor: ...


class NAGCell(nn.Module):
    """A standalone NAG cell: only the modules its graph uses."""

    def __init__(self, g: "CellGraph", spec: "CellSpec", ops: Sequence[str]) -> None:
        super().__init__()
        self.graph, self.reduction = g, spec.reduction
        c = spec.channels
        self.pres = nn.ModuleDict({str(i): nag_pre(spec, i) for i in (0, 1) if g.uses_input(i)})
        self.ops = nn.ModuleList(nag_op(ops[op], c, 2 if spec.reduction and g.pure(j) else 1)
                                 for j, op in enumerate(g.ops))
        self.in_reduces = nn.ModuleDict({f"{j}_{p}": FactorizedReduce(c, c) for j, preds in enumerate(g.preds)
                                         for p in preds if spec.reduction and not g.pure(j) and p < 2})
        self.out_reduces = nn.ModuleDict({str(p): FactorizedReduce(c, c) for p in g.outputs
                                          if spec.reduction and p < 2})
        self.combine = ReLUConvBN(len(g.outputs) * c, c, 1)

    def pre(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return self.pres[str(i)](x)

    def in_reduce(self, j: int, p: int, x: torch.Tensor) -> torch.Tensor:
        return self.in_reduces[f"{j}_{p}"](x)

    def out_reduce(self, p: int, x: torch.Tensor) -> torch.Tensor:
        return self.out_reduces[str(p)](x)

    def op(self, j: int, op: int, stride: int, x: torch.Tensor) -> torch.Tensor:
        return self.ops[j](x)

    def final(self, outputs: Sequence[int], x: torch.Tensor) -> torch.Tensor:
        return self.combine(x)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        return nag_cell_forward(self.graph, self.reduction, s0, s1, self)


class NAGBody(nn.Module):
    """Standalone stack of NAG cells; each reads the outputs of the two cells before it."""

    def __init__(self, cells: Sequence[nn.Module]) -> None:
        super().__init__()
        self.cells = nn.ModuleList(cells)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = s1 = x
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return s1


class NAGMixedCell(nn.Module):
    """One cell position of the NAG supernet. Vertex slot j holds every op (and, in a reduction cell,
    every op at stride 2 too); the output's 1x1 conv keeps one C-column block per state, so a graph
    uses the blocks of the states it concatenates (NAG's weight-sharing combine)."""

    def __init__(self, spec: "CellSpec", ops: Sequence[str]) -> None:
        super().__init__()
        from flexnas.spaces.nag import COMPUTE

        c, self.spec, self.op_names = spec.channels, spec, tuple(ops)
        self.reduction = spec.reduction
        self.pres = nn.ModuleList(nag_pre(spec, i) for i in (0, 1))
        self.ops1 = nn.ModuleList(nn.ModuleList(nag_op(op, c, 1) for op in ops) for _ in COMPUTE)
        if spec.reduction:
            self.ops2 = nn.ModuleList(nn.ModuleList(nag_op(op, c, 2) for op in ops) for _ in COMPUTE)
            self.in_reduces = nn.ModuleList(nn.ModuleList(FactorizedReduce(c, c) for _ in (0, 1)) for _ in COMPUTE)
            self.out_reduces = nn.ModuleList(FactorizedReduce(c, c) for _ in (0, 1))
        self.combine = ReLUConvBN((len(COMPUTE) + 2) * c, c, 1)

    def pre(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return self.pres[i](x)

    def in_reduce(self, j: int, p: int, x: torch.Tensor) -> torch.Tensor:
        return self.in_reduces[j][p](x)

    def out_reduce(self, p: int, x: torch.Tensor) -> torch.Tensor:
        return self.out_reduces[p](x)

    def op(self, j: int, op: int, stride: int, x: torch.Tensor) -> torch.Tensor:
        return (self.ops2 if stride == 2 else self.ops1)[j][op](x)

    def _columns(self, outputs: Sequence[int]) -> torch.Tensor:
        c = self.spec.channels
        return torch.cat([torch.arange(p * c, (p + 1) * c) for p in outputs]).to(self.combine[1].weight.device)

    def final(self, outputs: Sequence[int], x: torch.Tensor) -> torch.Tensor:
        w = self.combine[1].weight.index_select(1, self._columns(outputs))
        return self.combine[2](F.conv2d(F.relu(x), w))

    def forward_path(self, s0: torch.Tensor, s1: torch.Tensor, g: "CellGraph") -> torch.Tensor:
        return nag_cell_forward(g, self.reduction, s0, s1, self)

    def forward_mixture(self, s0: torch.Tensor, s1: torch.Tensor, probs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Soft graph: edge e weighs its source by P(e on); a vertex mixes its ops by their
        probabilities; in a reduction cell it blends its stride-2 form (no computing input) and its
        stride-1 form by the probability of having a computing input. Equals the path on one-hot
        probabilities of a canonical graph."""
        from flexnas.spaces.nag import COMPUTE, EDGE_INDEX, EDGES, OUT

        def on(u: int, v: int) -> torch.Tensor:
            return probs[EDGE_INDEX[(u, v)]][1]

        states = [self.pres[0](s0), self.pres[1](s1)]
        for j, v in enumerate(COMPUTE):
            q = probs[len(EDGES) + j]
            inner = [on(u, v) * states[u] for u in range(2, v)]
            if not self.reduction:
                h = sum(inner, on(0, v) * states[0] + on(1, v) * states[1])
                states.append(sum(q[k] * m(h) for k, m in enumerate(self.ops1[j])))
                continue
            has_inner = 1 - torch.prod(torch.stack([1 - on(u, v) for u in range(2, v)])) if v > 2 else q.new_zeros(())
            h2 = on(0, v) * states[0] + on(1, v) * states[1]
            h1 = sum(inner, on(0, v) * self.in_reduces[j][0](states[0]) + on(1, v) * self.in_reduces[j][1](states[1]))
            pure = sum(q[k] * m(h2) for k, m in enumerate(self.ops2[j]))
            mixed = sum(q[k] * m(h1) for k, m in enumerate(self.ops1[j]))
            states.append((1 - has_inner) * pure + has_inner * mixed)
        outs = [self.out_reduces[u](states[u]) if self.reduction and u < 2 else states[u] for u in range(OUT)]
        return self.combine(torch.cat([on(u, OUT) * s for u, s in enumerate(outs)], 1))

    def extract(self, g: "CellGraph") -> NAGCell:
        cell = NAGCell(g, self.spec, self.op_names).to(self.combine[1].weight.device)
        for i in (0, 1):
            if str(i) in cell.pres:
                cell.pres[str(i)].load_state_dict(self.pres[i].state_dict())
        for j, op in enumerate(g.ops):
            stride = 2 if self.reduction and g.pure(j) else 1
            cell.ops[j].load_state_dict((self.ops2 if stride == 2 else self.ops1)[j][op].state_dict())
        for key, m in cell.in_reduces.items():
            j, p = map(int, key.split("_"))
            m.load_state_dict(self.in_reduces[j][p].state_dict())
        for key, m in cell.out_reduces.items():
            m.load_state_dict(self.out_reduces[int(key)].state_dict())
        with torch.no_grad():
            cell.combine[1].weight.copy_(self.combine[1].weight.index_select(1, self._columns(g.outputs)))
        cell.combine[2].load_state_dict(self.combine[2].state_dict())
        return cell.train(self.training)


class NAGMixedBody(ChoiceLayer):
    """The NAG supernet body: one mixed cell per position; normal positions read the normal cell's
    choices, reduction positions the reduction cell's."""

    def __init__(self, specs: Sequence["CellSpec"], ops: Sequence[str]) -> None:
        from flexnas.spaces.nag import COMPUTE, EDGES

        super().__init__()
        self.cells = nn.ModuleList(NAGMixedCell(s, ops) for s in specs)
        per_cell = (2,) * len(EDGES) + (len(ops),) * len(COMPUTE)
        self.option_counts = per_cell * 2
        self._split = len(per_cell)

    def forward_path(self, x: torch.Tensor, config: tuple[int, ...]) -> torch.Tensor:
        from flexnas.spaces.nag import canonical

        graphs = canonical(tuple(config[: self._split])), canonical(tuple(config[self._split:]))
        s0 = s1 = x
        for cell in self.cells:
            s0, s1 = s1, cell.forward_path(s0, s1, graphs[cell.reduction])
        return s1

    def forward_mixture(self, x: torch.Tensor, probs: Sequence[torch.Tensor]) -> torch.Tensor:
        cell_probs = probs[: self._split], probs[self._split:]
        s0 = s1 = x
        for cell in self.cells:
            s0, s1 = s1, cell.forward_mixture(s0, s1, cell_probs[cell.reduction])
        return s1

    def extract(self, config: tuple[int, ...]) -> nn.Module:
        from flexnas.spaces.nag import canonical

        graphs = canonical(tuple(config[: self._split])), canonical(tuple(config[self._split:]))
        return NAGBody([cell.extract(graphs[cell.reduction]) for cell in self.cells])
