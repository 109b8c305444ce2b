"""What every searcher shares: the evaluator protocol, one evaluated arch (`Record`), and the result."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Optional, Protocol, runtime_checkable

from flexnas.arch import Arch
from flexnas.search.constraints import Constraint

__all__ = ["Evaluator", "Record", "SearchResult", "best_per_target", "pareto_front"]

UNCONSTRAINED = "unconstrained"


@runtime_checkable
class Evaluator(Protocol):
    """Scores one arch. Searchers accept anything with this method (supernet + BN recalibration, a
    lookup table, short training). The result holds at least `accuracy`, a fraction in [0, 1] where
    higher is better; other keys (loss, measured latency, ...) are archived alongside."""

    def evaluate(self, arch: Arch) -> dict[str, float]: ...


@dataclass(frozen=True, eq=False)
class Record:
    """One evaluated arch: evaluator metrics merged with the cost model's costs (costs win on a clash,
    so targets are judged by the same numbers the sampler used)."""

    arch: Arch
    text: str
    metrics: Mapping[str, float]
    order: int
    tag: str = ""
    seed: Optional[int] = None

    def __getitem__(self, key: str) -> float:
        try:
            return self.metrics[key]
        except KeyError:
            raise KeyError(f"record has no metric '{key}'; it has {sorted(self.metrics)}") from None

    @property
    def accuracy(self) -> float:
        return self["accuracy"]

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Record) and (self.arch, self.text, dict(self.metrics), self.order, self.tag,
                                               self.seed)
                == (other.arch, other.text, dict(other.metrics), other.order, other.tag, other.seed))

    def __hash__(self) -> int:
        return hash((self.arch, self.order))


def pareto_front(records: Sequence[Record], x: str = "macs", y: str = "accuracy") -> list[Record]:
    """Records not dominated by another (lower-or-equal `x` and higher-or-equal `y`, one strictly),
    sorted by `x`. Of several records at the very same (x, y) point only the earliest is kept."""
    ranked = sorted(records, key=lambda r: (r[x], -r[y], r.order))
    front: list[Record] = []
    for r in ranked:
        if not front or r[y] > front[-1][y]:
            front.append(r)
    return front


class BestByTarget(dict):
    """`{canonical target text: Record}` that also answers any spelling of a target:
    `best["macs<=0.3M"]` finds the entry stored as 'macs<=300K'."""

    @staticmethod
    def _canonical(key: object) -> object:
        if isinstance(key, Constraint):
            return str(key)
        if isinstance(key, str) and key != UNCONSTRAINED:
            try:
                return str(Constraint.parse(key))
            except ValueError:
                return key
        return key

    def __missing__(self, key: object) -> Record:
        canonical = self._canonical(key)
        if canonical != key and dict.__contains__(self, canonical):
            return dict.__getitem__(self, canonical)
        raise KeyError(f"no best arch for target {key!r}; targets with one: {list(self)}")

    def __contains__(self, key: object) -> bool:
        return dict.__contains__(self, key) or dict.__contains__(self, self._canonical(key))

    def get(self, key: object, default: Optional[Record] = None) -> Optional[Record]:  # type: ignore[override]
        return self[key] if key in self else default


def best_per_target(records: Sequence[Record], constraints: Sequence[Constraint]) -> dict[str, Record]:
    """Highest accuracy meeting each target (earliest wins a tie); targets nobody met are left out.
    Without targets the single entry 'unconstrained' holds the best overall."""
    best: dict[str, Record] = BestByTarget()
    keyed = [(str(c), c.satisfied) for c in constraints] or [(UNCONSTRAINED, lambda m: True)]
    for key, ok in keyed:
        for r in records:
            if ok(r.metrics) and (key not in best or r.accuracy > best[key].accuracy):
                best[key] = r
    return best


@dataclass
class SearchResult:
    """Every arch this search scored (in order), the best per target, and the Pareto front."""

    records: list[Record]
    best: dict[str, Record]
    constraints: list[Constraint] = field(default_factory=list)
    evaluations: int = 0
    archive_hits: int = 0

    def pareto(self, x: str = "macs", y: str = "accuracy") -> list[Record]:
        return pareto_front(self.records, x, y)

    def __len__(self) -> int:
        return len(self.records)
