"""Hardware targets such as `macs<=300M`: parsed once, checked in bulk, and checked for feasibility.

Bounds are stored as raw counts (3e8, not 300) so a target can never be compared in the wrong unit
against the cost model's raw counts (the pytorch-BigNAS 6e8-vs-MFLOPs bug).
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Union

import numpy as np

from flexnas.errors import ConstraintError, did_you_mean

if TYPE_CHECKING:
    from flexnas.cost.model import CostModel

__all__ = ["Constraint", "check_feasible", "format_value", "metric_unit"]

_SUFFIX = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9}
# Metrics that count things (written with K/M/G); anything else (latency_ms, ...) is printed plainly.
_COUNT_METRICS = ("macs", "params", "flops")
_UNITS = {"macs": "MACs", "params": "params", "flops": "FLOPs", "latency_ms": "ms"}
_LABELS = {"latency_ms": "latency"}

_NUM = r"(?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?\s*[kmg]?"
_NAME = r"[a-z_][a-z0-9_]*"
_UPPER = re.compile(rf"^(?P<metric>{_NAME})\s*<=\s*(?P<high>{_NUM})$", re.I)
_LOWER = re.compile(rf"^(?P<metric>{_NAME})\s*>=\s*(?P<low>{_NUM})$", re.I)
_UPPER_R = re.compile(rf"^(?P<high>{_NUM})\s*>=\s*(?P<metric>{_NAME})$", re.I)
_LOWER_R = re.compile(rf"^(?P<low>{_NUM})\s*<=\s*(?P<metric>{_NAME})$", re.I)
_RANGE = re.compile(rf"^(?P<low>{_NUM})\s*<=\s*(?P<metric>{_NAME})\s*<=\s*(?P<high>{_NUM})$", re.I)
FORMS = "'macs<=300M', 'params<=4.5M', 'macs>=100M', '200M<=macs<=300M', 'latency_ms<=20' (suffixes K/M/G)"


def _number(text: str) -> float:
    text = text.strip().replace(" ", "")
    suffix = text[-1].lower() if text[-1].lower() in "kmg" else ""
    return float(text[: len(text) - len(suffix)]) * _SUFFIX[suffix]


def format_value(metric: str, value: float) -> str:
    """Canonical spelling of a bound: counts with K/M/G (`300M`), other metrics plainly (`20`)."""
    if metric in _COUNT_METRICS:
        for suffix, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
            if abs(value) >= scale:
                return f"{value / scale:.12g}{suffix}"
    return f"{value:.12g}"


def metric_unit(metric: str) -> str:
    """How a metric is named after a number in messages ('MACs', 'params', 'ms')."""
    return _UNITS.get(metric, metric)


def _round_sig(value: float, up: bool, digits: int = 4) -> float:
    """Round to `digits` significant digits towards +inf (`up`) or -inf, so a printed space bound
    stays inside the space: typing the printed minimum as a target is always feasible."""
    if value == 0 or not math.isfinite(value):
        return value
    scale = 10.0 ** (math.floor(math.log10(abs(value))) - digits + 1)
    q = round(value / scale, 6)
    return (math.ceil(q) if up else math.floor(q)) * scale


def _format_range(metric: str, lo: float, hi: float) -> str:
    if metric in _COUNT_METRICS:
        a, b = _round_sig(lo / 1e6, up=True), _round_sig(hi / 1e6, up=False)
        return f"{a:.4g}M..{b:.4g}M {metric_unit(metric)}"
    return f"{_round_sig(lo, up=True):.4g}..{_round_sig(hi, up=False):.4g} {metric_unit(metric)}"


@dataclass(frozen=True)
class Constraint:
    """`low <= costs[metric] <= high` (either bound may be None, not both). Bounds are inclusive."""

    metric: str
    low: Optional[float] = None
    high: Optional[float] = None

    def __post_init__(self) -> None:
        if not isinstance(self.metric, str) or not re.fullmatch(_NAME, self.metric, re.I):
            raise ConstraintError(f"invalid metric name {self.metric!r}; accepted forms: {FORMS}")
        object.__setattr__(self, "metric", self.metric.lower())
        if self.low is None and self.high is None:
            raise ConstraintError(f"constraint on '{self.metric}' has no bound; accepted forms: {FORMS}")
        for name in ("low", "high"):
            v = getattr(self, name)
            if v is not None:
                if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                    raise ConstraintError(f"constraint on '{self.metric}': {name} bound must be a finite "
                                          f"number, got {v!r}")
                object.__setattr__(self, name, float(v))
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ConstraintError(f"constraint {format_value(self.metric, self.low)}<={self.metric}<="
                                  f"{format_value(self.metric, self.high)} is empty: the lower bound "
                                  f"exceeds the upper bound")

    @classmethod
    def parse(cls, text: Union[str, "Constraint"]) -> "Constraint":
        """Parse `macs<=300M`, `macs>=100M`, `200M<=macs<=300M`, `latency_ms<=20` (K/M/G suffixes)."""
        if isinstance(text, Constraint):
            return text
        if not isinstance(text, str):
            raise ConstraintError(f"expected a constraint string, got {type(text).__name__}; "
                                  f"accepted forms: {FORMS}")
        s = text.strip()
        for pattern in (_RANGE, _UPPER, _LOWER, _UPPER_R, _LOWER_R):
            m = pattern.match(s)
            if m:
                groups = m.groupdict()
                low = _number(groups["low"]) if groups.get("low") else None
                high = _number(groups["high"]) if groups.get("high") else None
                return cls(groups["metric"], low, high)
        hint = ""
        if re.search(r"(?<![<>])=(?!=)|==|<(?!=)|>(?!=)", s):
            hint = " (use '<=' or '>=': bounds are inclusive)"
        raise ConstraintError(f"cannot parse constraint {text!r}{hint}; accepted forms: {FORMS}")

    def __str__(self) -> str:
        lo = None if self.low is None else format_value(self.metric, self.low)
        hi = None if self.high is None else format_value(self.metric, self.high)
        if lo is not None and hi is not None:
            return f"{lo}<={self.metric}<={hi}"
        return f"{self.metric}<={hi}" if hi is not None else f"{self.metric}>={lo}"

    @property
    def label(self) -> str:
        """Short human form for plots and tables, e.g. 'MACs ≤ 300M', 'latency ≤ 20 ms'."""
        if self.metric in _COUNT_METRICS:
            name, unit = metric_unit(self.metric), ""
        else:
            name = _LABELS.get(self.metric, self.metric)
            unit = f" {_UNITS[self.metric]}" if self.metric in _UNITS else ""
        lo = None if self.low is None else format_value(self.metric, self.low) + unit
        hi = None if self.high is None else format_value(self.metric, self.high) + unit
        if lo is not None and hi is not None:
            return f"{lo} ≤ {name} ≤ {hi}"
        return f"{name} ≤ {hi}" if hi is not None else f"{name} ≥ {lo}"

    def _value(self, costs: Mapping[str, Any]) -> Any:
        try:
            return costs[self.metric]
        except KeyError:
            raise ConstraintError(f"target {self} needs metric '{self.metric}', but only "
                                  f"{sorted(costs)} are known{did_you_mean(self.metric, costs)}") from None

    def satisfied(self, costs: Mapping[str, float]) -> bool:
        v = float(self._value(costs))
        return (self.low is None or v >= self.low) and (self.high is None or v <= self.high)

    def mask(self, costs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Vectorised `satisfied` over arrays of costs (as returned by `CostModel.costs`)."""
        v = np.asarray(self._value(costs), dtype=np.float64)
        ok = np.ones(v.shape, dtype=bool)
        if self.low is not None:
            ok &= v >= self.low
        if self.high is not None:
            ok &= v <= self.high
        return ok


def check_feasible(constraints: Union[Constraint, Sequence[Constraint]], cost_model: "CostModel") -> None:
    """Fail early, before any evaluation, on a target the space cannot meet or cannot measure."""
    if isinstance(constraints, Constraint):
        constraints = [constraints]
    space = getattr(getattr(cost_model, "space", None), "name", "search")
    for c in constraints:
        if c.metric not in cost_model.metrics:
            hint = did_you_mean(c.metric, cost_model.metrics)
            if c.metric == "flops" and "macs" in cost_model.metrics:
                hint = " (flexnas counts multiply-adds as 'macs', the unit papers call FLOPs; write macs<=...)"
            raise ConstraintError(f"target {c}: unknown metric '{c.metric}'{hint}; the {space} cost model "
                                  f"has {', '.join(cost_model.metrics)}")
        lo, hi = cost_model.range(c.metric)
        if (c.high is not None and c.high < lo) or (c.low is not None and c.low > hi):
            raise ConstraintError(f"target {c} is infeasible: the {space} space spans "
                                  f"{_format_range(c.metric, lo, hi)}")
