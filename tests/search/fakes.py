"""Deterministic stand-ins for the supernet evaluator: scores are known functions of the arch."""
from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod

from flexnas.arch import Arch
from flexnas.spaces.base import SearchSpace


def jitter(arch: Arch) -> float:
    """A stable pseudo-random number in [0, 1) per arch (hashlib, not the salted built-in hash)."""
    digest = hashlib.sha256(repr(arch.choices).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class CountingEvaluator(ABC):
    """Records every call, so tests can assert what was (re-)evaluated; subclasses say the accuracy."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        self.cost_model = space.cost_model()
        self.calls: list[Arch] = []

    def evaluate(self, arch: Arch) -> dict[str, float]:
        self.calls.append(arch)
        return {"accuracy": self.accuracy(arch), "loss": 1.0 - self.accuracy(arch)}

    @abstractmethod
    def accuracy(self, arch: Arch) -> float: ...


class CostEvaluator(CountingEvaluator):
    """Accuracy rises smoothly with MACs, plus a small per-arch perturbation."""

    def accuracy(self, arch: Arch) -> float:
        macs = self.cost_model.cost(arch)["macs"]
        return 0.5 + 0.3 * (1.0 - math.exp(-macs / 1e6)) + 0.02 * jitter(arch)


class OpCountEvaluator(CountingEvaluator):
    """Accuracy = share of layers that pick `op` (plus a tiny perturbation): a known optimum that
    uniform sampling almost never reaches and hill climbing does."""

    def __init__(self, space: SearchSpace, op: str = "k5e3") -> None:
        super().__init__(space)
        self.op = op

    def accuracy(self, arch: Arch) -> float:
        hits = sum(self.space.choices[i].options[c] == self.op for i, c in enumerate(arch.choices))
        return hits / len(arch.choices) + 0.001 * jitter(arch)


class Killed(Exception):
    """Stands in for Ctrl-C or a crashed job."""


class FailingEvaluator:
    """Wraps an evaluator and raises after `limit` calls: a search killed mid-way."""

    def __init__(self, inner: CountingEvaluator, limit: int) -> None:
        self.inner = inner
        self.limit = limit

    def evaluate(self, arch: Arch) -> dict[str, float]:
        if len(self.inner.calls) >= self.limit:
            raise Killed(f"killed after {self.limit} evaluations")
        return self.inner.evaluate(arch)
