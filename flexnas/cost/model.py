"""`CostModel`: exact per-layer lookup tables, vectorised batch costs and differentiable expectations.

Each searchable layer gets one table row per raw config of the choice points it depends on
(`space.layer_points`: its own, plus, in elastic spaces, context points owned by other layers such as
the resolution or the previous stage's width), indexed in mixed radix (point 0 least significant).
Raw configs that are not canonical hold the cost of the config they repair to, so
`cost(arch) == cost(space.repair(arch))` and the expectation over independent per-point probabilities
is well defined for every space. The total is the exact sum of the table rows plus the constant
stem/head cost; by linearity the expectation stays exact when layers share context points.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Union

import numpy as np
import torch

from flexnas.arch import Arch
from flexnas.cost.counter import count
from flexnas.errors import ConstraintError

if TYPE_CHECKING:
    from flexnas.spaces.base import SearchSpace

METRICS = ("macs", "params")


class CostModel:
    def __init__(self, space: "SearchSpace", tables: dict[str, list[np.ndarray]],
                 constants: dict[str, float]) -> None:
        self.space = space
        self.metrics = tuple(tables)
        self.constants = dict(constants)
        self._tables = tables
        self._points = space.layer_points
        counts = [_point_counts(space, pts) for pts in self._points]
        self._counts = counts
        sizes = [math.prod(c) for c in counts]
        self._offsets = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.int64)
        # radix[p, l]: weight of choice point p in layer l's row index.
        radix = np.zeros((len(space.choices), len(space.layers)), dtype=np.int64)
        for l, (pts, c) in enumerate(zip(self._points, counts)):
            radix[list(pts), l] = np.cumprod((1,) + c[:-1])
        # Layers sharing a point (elastic spaces) need a joint optimisation for ranges and extremes.
        self._coupled = len({p for pts in self._points for p in pts}) < sum(len(p) for p in self._points)
        self._radix = radix
        self._flat = {m: np.concatenate(t).astype(np.float64) for m, t in tables.items()}
        self._torch_tables: dict[tuple[str, torch.device, torch.dtype], list[torch.Tensor]] = {}
        self._optimum: dict[tuple[str, bool], tuple[float, tuple[int, ...]]] = {}

    # ---- construction ---------------------------------------------------------------------------
    @classmethod
    def measure(cls, space: "SearchSpace") -> "CostModel":
        """Build the tables by counting the real modules at their real input shapes (meta device)."""
        with torch.device("meta"):
            c_stem = count(space._stem(), (3, space.input_size, space.input_size))
            last = space.layers[-1]
            head_hw = -(-last.in_hw // last.stride)
            c_head = count(space._head(), (last.c_out, head_hw, head_hw))
            tables: dict[str, list[np.ndarray]] = {m: [] for m in METRICS}
            for layer, points in zip(space.layers, space.layer_points):
                shape = (layer.c_in, layer.in_hw, layer.in_hw)
                measured: dict[object, dict[str, int]] = {}

                def measure(cfg: tuple[int, ...], layer=layer, shape=shape, measured=measured) -> dict[str, int]:
                    key = space._cost_key(layer, cfg)
                    if key not in measured:
                        measured[key] = count(space._subnet_layer(layer, cfg), shape)
                    return measured[key]

                by_key: dict[object, dict[str, float]] = {}
                rows: dict[str, list[float]] = {m: [] for m in METRICS}
                # itertools.product varies the last item fastest; reversed points give mixed radix
                # with point 0 least significant, matching `_radix`.
                for rev in itertools.product(*(range(n) for n in reversed(_point_counts(space, points)))):
                    cfg = space._repair_layer(layer, tuple(reversed(rev)))
                    key = space._cost_key(layer, cfg)
                    if key not in by_key:
                        by_key[key] = space._layer_cost(layer, cfg, measure)
                    for m in METRICS:
                        rows[m].append(by_key[key][m])
                for m in METRICS:
                    tables[m].append(np.asarray(rows[m], dtype=np.float64))
        constants = {m: float(c_stem[m] + c_head[m]) for m in METRICS}
        for scratch in ("_count_memo", "_count_modules"):  # a space's measuring caches, if any
            space.__dict__.pop(scratch, None)
        return cls(space, tables, constants)

    # ---- exact costs ----------------------------------------------------------------------------
    def _check_metric(self, metric: str) -> None:
        if metric not in self.metrics:
            raise ConstraintError(f"unknown metric '{metric}'; this cost model has {list(self.metrics)}")

    def cost(self, arch: Arch) -> dict[str, float]:
        rows = np.asarray(arch.choices, dtype=np.int64) @ self._radix + self._offsets
        return {m: float(self.constants[m] + self._flat[m][rows].sum()) for m in self.metrics}

    def costs(self, archs: Union[Sequence[Arch], np.ndarray]) -> dict[str, np.ndarray]:
        """Vectorised costs of many archs (a list of Arch, or an int array of shape (N, choices))."""
        if isinstance(archs, np.ndarray):
            choices = archs.astype(np.int64, copy=False)
        else:
            choices = np.fromiter(itertools.chain.from_iterable(a.choices for a in archs), dtype=np.int64,
                                  count=len(archs) * len(self.space.choices)).reshape(len(archs), -1)
        rows = choices @ self._radix + self._offsets
        return {m: self.constants[m] + self._flat[m][rows].sum(1) for m in self.metrics}

    def range(self, metric: str = "macs") -> tuple[float, float]:
        """Exact smallest and largest value of `metric` over the space."""
        self._check_metric(metric)
        if self._coupled:
            return (self.constants[metric] + self._optimise(metric, False)[0],
                    self.constants[metric] + self._optimise(metric, True)[0])
        t = self._tables[metric]
        return (self.constants[metric] + sum(float(r.min()) for r in t),
                self.constants[metric] + sum(float(r.max()) for r in t))

    def extreme(self, metric: str, largest: bool) -> Arch:
        """The arch with the smallest (or largest) value of `metric`."""
        self._check_metric(metric)
        if self._coupled:
            return self.space.repair(self._optimise(metric, largest)[1])
        configs = []
        for layer, row in zip(self.space.layers, self._tables[metric]):
            idx = int(row.argmax() if largest else row.argmin())
            cfg = []
            for n in layer.option_counts:
                cfg.append(idx % n)
                idx //= n
            configs.append(self.space._repair_layer(layer, tuple(cfg)))
        return self.space._arch(configs)

    def _optimise(self, metric: str, largest: bool) -> tuple[float, tuple[int, ...]]:
        key = (metric, largest)
        if key not in self._optimum:
            self._optimum[key] = _optimise_tables(self._tables[metric], self._points, self._counts,
                                                  len(self.space.choices), largest)
        return self._optimum[key]

    # ---- differentiable expectation -------------------------------------------------------------
    def _layer_tables(self, metric: str, like: torch.Tensor) -> list[torch.Tensor]:
        key = (metric, like.device, like.dtype)
        if key not in self._torch_tables:
            self._torch_tables[key] = [torch.as_tensor(t, dtype=like.dtype, device=like.device)
                                       for t in self._tables[metric]]
        return self._torch_tables[key]

    def expected(self, probs: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """E[cost] under independent per-choice-point probabilities (one vector per point, with any
        leading batch dims). Equals `cost(arch)` for one-hot probabilities of a canonical arch."""
        out: dict[str, torch.Tensor] = {}
        joints = []
        for pts in self._points:
            layer_probs = [probs[p] for p in pts]
            joint = layer_probs[0]
            for p in layer_probs[1:]:
                joint = (p.unsqueeze(-1) * joint.unsqueeze(-2)).flatten(-2)
            joints.append(joint)
        for m in self.metrics:
            tables = self._layer_tables(m, probs[0])
            total = sum((j * t).sum(-1) for j, t in zip(joints, tables))
            out[m] = total + self.constants[m]  # type: ignore[operator]
        return out


def _point_counts(space: "SearchSpace", points: Sequence[int]) -> tuple[int, ...]:
    return tuple(len(space.choices[p].options) for p in points)


def _optimise_tables(tables: Sequence[np.ndarray], points: Sequence[Sequence[int]],
                     counts: Sequence[Sequence[int]], n_points: int,
                     largest: bool) -> tuple[float, tuple[int, ...]]:
    """Exact min (or max) of a sum of tables over shared choice points, by variable elimination:
    each point is maximised out of the product of the tables that mention it (greedily the point
    whose merged table is smallest), and the best choices are read back in reverse order. Exact for
    any sharing pattern; cheap when sharing is chain-like, as in elastic spaces (resolution, widths)."""
    best = np.max if largest else np.min
    arg = np.argmax if largest else np.argmin
    # A factor is (points, array with one axis per point, in that order).
    factors: list[tuple[tuple[int, ...], np.ndarray]] = []
    for table, pts, cnt in zip(tables, points, counts):
        # Row index has point 0 least significant: C-order reshape of reversed counts, then reverse axes.
        factors.append((tuple(pts), np.asarray(table, dtype=np.float64).reshape(tuple(reversed(cnt))).T))
    size = {p: n for pts, cnt in zip(points, counts) for p, n in zip(pts, cnt)}
    trace: list[tuple[int, tuple[int, ...], np.ndarray]] = []
    remaining = set(size)
    while remaining:
        def merged(p: int) -> tuple[int, ...]:
            return tuple(sorted({q for pts, _ in factors if p in pts for q in pts}))

        p = min(remaining, key=lambda q: math.prod(size[r] for r in merged(q)))
        scope = merged(p)
        total = np.zeros(tuple(size[q] for q in scope))
        keep = []
        for pts, arr in factors:
            if p in pts:
                order = sorted(range(len(pts)), key=lambda i: scope.index(pts[i]))
                shape = [1] * len(scope)
                for i in order:
                    shape[scope.index(pts[i])] = size[pts[i]]
                total = total + arr.transpose(order).reshape(shape)
            else:
                keep.append((pts, arr))
        axis = scope.index(p)
        rest = scope[:axis] + scope[axis + 1:]
        trace.append((p, rest, arg(total, axis=axis)))
        factors = keep + [(rest, best(total, axis=axis))]
        remaining.discard(p)
    value = float(sum(float(arr) for _, arr in factors))
    choice = [0] * n_points
    for p, rest, argtable in reversed(trace):
        choice[p] = int(argtable[tuple(choice[q] for q in rest)])
    return value, tuple(choice)
