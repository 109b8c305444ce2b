"""`CostModel`: exact per-layer lookup tables, vectorised batch costs and differentiable expectations.

Each searchable layer gets one table row per raw config of its choice points, indexed in mixed radix
(choice point 0 least significant). Raw configs that are not canonical hold the cost of the config
they repair to, so `cost(arch) == cost(space.repair(arch))` and the expectation over independent
per-point probabilities is well defined for every space. A layer's cost never depends on other
layers' choices (all candidates of a layer share input and output shapes), which makes the total the
exact sum of the table rows plus the constant stem/head cost.
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
        counts = [layer.option_counts for layer in space.layers]
        sizes = [math.prod(c) for c in counts]
        self._offsets = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.int64)
        # radix[p, l]: weight of choice point p in layer l's row index.
        radix = np.zeros((len(space.choices), len(space.layers)), dtype=np.int64)
        for l, (sl, c) in enumerate(zip(space.layer_slices, counts)):
            radix[sl, l] = np.cumprod((1,) + c[:-1])
        self._radix = radix
        self._flat = {m: np.concatenate(t).astype(np.float64) for m, t in tables.items()}
        self._torch_tables: dict[tuple[str, torch.device, torch.dtype], list[torch.Tensor]] = {}

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
            for layer in space.layers:
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
                for rev in itertools.product(*(range(n) for n in reversed(layer.option_counts))):
                    cfg = space._repair_layer(layer, tuple(reversed(rev)))
                    key = space._cost_key(layer, cfg)
                    if key not in by_key:
                        by_key[key] = space._layer_cost(layer, cfg, measure)
                    for m in METRICS:
                        rows[m].append(by_key[key][m])
                for m in METRICS:
                    tables[m].append(np.asarray(rows[m], dtype=np.float64))
        constants = {m: float(c_stem[m] + c_head[m]) for m in METRICS}
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
        t = self._tables[metric]
        return (self.constants[metric] + sum(float(r.min()) for r in t),
                self.constants[metric] + sum(float(r.max()) for r in t))

    def extreme(self, metric: str, largest: bool) -> Arch:
        """The arch with the smallest (or largest) value of `metric`."""
        self._check_metric(metric)
        configs = []
        for layer, row in zip(self.space.layers, self._tables[metric]):
            idx = int(row.argmax() if largest else row.argmin())
            cfg = []
            for n in layer.option_counts:
                cfg.append(idx % n)
                idx //= n
            configs.append(self.space._repair_layer(layer, tuple(cfg)))
        return self.space._arch(configs)

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
        for sl in self.space.layer_slices:
            layer_probs = probs[sl]
            joint = layer_probs[0]
            for p in layer_probs[1:]:
                joint = (p.unsqueeze(-1) * joint.unsqueeze(-2)).flatten(-2)
            joints.append(joint)
        for m in self.metrics:
            tables = self._layer_tables(m, probs[0])
            total = sum((j * t).sum(-1) for j, t in zip(joints, tables))
            out[m] = total + self.constants[m]  # type: ignore[operator]
        return out
