"""Machinery the searchers share: constrained sampling by rejection, and scoring through the archive.

Cost checks are vectorised (`CostModel.costs` over a whole batch of candidates), so rejecting
thousands of candidates costs far less than one evaluation. Every draw comes from the `random.Random`
the caller passed in (numpy generators are seeded from it), so a search replays exactly from its seed.
"""
from __future__ import annotations

import dataclasses
import random
from collections.abc import Container, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from flexnas.arch import Arch
from flexnas.errors import ConfigError, ConstraintError, DataError
from flexnas.search.archive import Archive
from flexnas.search.base import Evaluator, Record
from flexnas.search.constraints import Constraint, _format_range

if TYPE_CHECKING:
    from flexnas.cost.model import CostModel
    from flexnas.spaces.base import SearchSpace

# A target is a Constraint, or None for an unconstrained search.
Target = Optional[Constraint]

UNIFORM_BATCH = 1024
UNIFORM_MAX_SAMPLES = 200 * UNIFORM_BATCH
VARIANT_ROUNDS = 30
# A walk into a narrow cost band (Sampler._descend): steps, and mutants scored per step.
CLIMB_STEPS = 200
CLIMB_WIDTH = 64


def target_name(target: Target) -> str:
    return "unconstrained" if target is None else str(target)


def meets(target: Target, metrics: dict[str, float]) -> bool:
    return target is None or target.satisfied(metrics)


def _mask(target: Target, costs: dict[str, np.ndarray], n: int) -> np.ndarray:
    return np.ones(n, dtype=bool) if target is None else target.mask(costs)


def check_budget(budget: int) -> None:
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
        raise ConfigError(f"search budget must be a non-negative integer (evaluations), got {budget!r}")


def space_span(space: "SearchSpace", target: Constraint) -> str:
    lo, hi = space.cost_model().range(target.metric)
    return f"the {space.name} space spans {_format_range(target.metric, lo, hi)}"


class Sampler:
    """Draws new archs meeting a target, skipping `exclude` (what the search already scored)."""

    def __init__(self, space: "SearchSpace", rng: random.Random) -> None:
        self.space = space
        self.cost_model: "CostModel" = space.cost_model()
        self.rng = rng
        self._counts = np.array([len(p.options) for p in space.choices], dtype=np.int64)
        self._uniform_hopeless: set[str] = set()

    def _accept(self, target: Target, cands: Sequence[Arch], want: int, exclude: Container[Arch],
                taken: set[Arch], out: list[Arch]) -> int:
        if not cands or want <= 0:
            return 0
        ok = _mask(target, self.cost_model.costs(list(cands)), len(cands))
        got = 0
        for arch, good in zip(cands, ok):
            if good and arch not in exclude and arch not in taken:
                out.append(arch)
                taken.add(arch)
                got += 1
                if got == want:
                    break
        return got

    def uniform(self, target: Target, n: int, exclude: Container[Arch],
                max_samples: int = UNIFORM_MAX_SAMPLES) -> list[Arch]:
        """Up to `n` distinct archs drawn uniformly (as `space.sample`) and kept if they meet `target`."""
        out: list[Arch] = []
        if n <= 0 or target_name(target) in self._uniform_hopeless:
            return out
        taken: set[Arch] = set()
        gen = np.random.default_rng(self.rng.getrandbits(64))
        tried = hits = 0
        while len(out) < n and tried < max_samples:
            raw = gen.integers(0, self._counts, size=(UNIFORM_BATCH, len(self._counts)))
            tried += UNIFORM_BATCH
            # Costs of a raw (unrepaired) config equal those of the arch it repairs to.
            idx = np.flatnonzero(_mask(target, self.cost_model.costs(raw), UNIFORM_BATCH))
            hits += len(idx)
            for i in idx:
                arch = self.space.repair(raw[i].tolist())
                if arch not in exclude and arch not in taken:
                    out.append(arch)
                    taken.add(arch)
                    if len(out) == n:
                        break
        if hits == 0:
            self._uniform_hopeless.add(target_name(target))
        return out

    def variants(self, target: Target, parents: Sequence[Arch], n_mut: int, n_cross: int, prob: float,
                 exclude: Container[Arch], grow: bool = False) -> list[Arch]:
        """New archs meeting `target`: `n_mut` mutants of random parents and `n_cross` crossovers of two,
        by rejection. With `grow`, accepted archs become parents too (a random walk out of a seed)."""
        parents = list(parents)
        out: list[Arch] = []
        taken: set[Arch] = set()
        if not parents:
            return out
        if len(parents) < 2:
            n_mut, n_cross = n_mut + n_cross, 0
        got_m = got_c = 0
        for _ in range(VARIANT_ROUNDS):
            need_m, need_c = n_mut - got_m, n_cross - got_c
            if need_m <= 0 and need_c <= 0:
                break
            start = len(out)
            if need_m > 0:
                cands = [self.space.mutate(self.rng.choice(parents), prob, self.rng) for _ in range(2 * need_m)]
                got_m += self._accept(target, cands, need_m, exclude, taken, out)
            if need_c > 0:
                cands = [self.space.crossover(*self.rng.sample(parents, 2), self.rng) for _ in range(2 * need_c)]
                got_c += self._accept(target, cands, need_c, exclude, taken, out)
            if grow:
                parents.extend(out[start:])
        return out

    def fresh(self, target: Target, n: int, exclude: set[Arch], walk_from: Sequence[Arch],
              prob: float, max_samples: int = UNIFORM_MAX_SAMPLES) -> list[Arch]:
        """`n` (or fewer, if the target holds fewer) new archs meeting `target`, none in `exclude`:
        uniform draws first (at most `max_samples`); a target too tight for them is entered by a
        mutation walk (rate `prob`) from `walk_from` (e.g. the best archs found so far) and `seeds`."""
        out = self.uniform(target, n, exclude, max_samples)
        if len(out) < n:
            seeds = list(walk_from) + out + self.seeds(target)
            if not seeds:
                assert target is not None
                raise ConstraintError(
                    f"target {target} is too tight to sample: none of {max_samples} uniformly drawn "
                    f"archs meets it, neither does the space's extreme arch on '{target.metric}', and "
                    f"{CLIMB_STEPS} steps of a greedy walk from it did not reach it "
                    f"({space_span(self.space, target)}); widen the target")
            out += self.variants(target, seeds, n - len(out), 0, prob, exclude | set(out), grow=True)
        return out

    def seeds(self, target: Target) -> list[Arch]:
        """Archs meeting a target too tight for uniform sampling, where a walk into it can start: the
        space's extreme archs on the target's metric, or, for a narrow band between them (e.g. 1.05M <=
        macs <= 1.16M), the first arch a cost-descending walk from each extreme finds inside it."""
        if target is None:
            return []
        out = []
        for largest, bound in ((False, target.high), (True, target.low)):
            if bound is not None:
                arch = self.cost_model.extreme(target.metric, largest=largest)
                if not meets(target, self.cost_model.cost(arch)):
                    arch = self._descend(arch, target)
                if arch is not None and arch not in out:
                    out.append(arch)
        return out

    def _descend(self, start: Arch, target: Constraint) -> Optional[Arch]:
        """Greedy walk from `start` towards `target`'s band on its metric: each step scores `CLIMB_WIDTH`
        mutants of the current arch (about one choice changed each) and moves to the one nearest the
        band. Returns the first arch inside it, or None if `CLIMB_STEPS` steps do not get there.
        Mutants stay raw option rows (their costs equal the repaired arch's) until one is returned."""
        low = -np.inf if target.low is None else target.low
        high = np.inf if target.high is None else target.high

        def distance(values: np.ndarray) -> np.ndarray:
            return np.maximum(low - values, 0.0) + np.maximum(values - high, 0.0)

        gen = np.random.default_rng(self.rng.getrandbits(64))
        counts = self._counts
        movable = counts > 1
        prob = 1.0 / max(1, int(movable.sum()))
        current = np.array(start.choices, dtype=np.int64)
        gap = float(distance(np.asarray(self.cost_model.costs(current[None])[target.metric], dtype=float))[0])
        for _ in range(CLIMB_STEPS):
            # move each choice point with probability `prob` to another of its options
            moved = (gen.random((CLIMB_WIDTH, len(counts))) < prob) & movable
            shift = gen.integers(1, np.maximum(counts, 2), size=(CLIMB_WIDTH, len(counts)))
            cands = (current[None] + moved * shift) % counts
            gaps = distance(np.asarray(self.cost_model.costs(cands)[target.metric], dtype=float))
            best = int(gaps.argmin())
            if gaps[best] == 0.0:
                return self.space.repair(cands[best].tolist())
            if gaps[best] < gap:
                current, gap = cands[best], float(gaps[best])
        return None


class Scorer(AbstractContextManager):
    """Scores archs for one search: answers from the archive when it can, else calls the evaluator
    and writes the result through. `budget` counts the distinct archs this search scores, archive hits
    included, so a restarted search replays its first steps for free and stops where the first run
    would have stopped."""

    def __init__(self, space: "SearchSpace", evaluator: Evaluator, archive: Optional[Archive], budget: int,
                 tag: str, seed: Optional[int], progress: bool) -> None:
        check_budget(budget)
        if not callable(getattr(evaluator, "evaluate", None)):
            raise ConfigError(f"evaluator {type(evaluator).__name__} has no evaluate(arch) method")
        self.space = space
        self.cost_model = space.cost_model()
        self.evaluator = evaluator
        self.archive = archive if archive is not None else Archive(None, space)
        if self.archive.space.name != space.name:
            raise DataError(f"archive holds '{self.archive.space.name}' archs but the search runs on "
                            f"'{space.name}'")
        self.budget = budget
        self.tag = tag
        self.seed = seed
        self.records: list[Record] = []
        self.seen: set[Arch] = set()
        self.evaluations = 0
        self.archive_hits = 0
        self._progress: Any = None
        self._task: Any = None
        if progress:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("{task.fields[info]}"), TimeRemainingColumn())

    def __enter__(self) -> "Scorer":
        if self._progress is not None:
            self._progress.start()
            self._task = self._progress.add_task(f"{self.tag} search", total=self.budget, info="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    @property
    def remaining(self) -> int:
        return self.budget - len(self.records)

    def score(self, arch: Arch) -> Record:
        if arch in self.seen:
            raise RuntimeError(f"{self.space.encode(arch)} was already scored by this search")
        if self.remaining <= 0:
            raise RuntimeError("search budget exhausted")
        costs = self.cost_model.cost(arch)
        rec = self.archive.record(arch)
        if rec is None:
            metrics = self.evaluator.evaluate(arch)
            if not isinstance(metrics, dict) or "accuracy" not in metrics:
                got = sorted(metrics) if isinstance(metrics, dict) else type(metrics).__name__
                raise DataError(f"evaluator {type(self.evaluator).__name__} returned {got} for "
                                f"{self.space.encode(arch)}; it must return a dict with 'accuracy'")
            rec = self.archive.add(arch, {**metrics, **costs}, tag=self.tag, seed=self.seed)
            self.evaluations += 1
        else:
            # Costs come from the current cost model, whatever the archive stored.
            rec = dataclasses.replace(rec, metrics={**rec.metrics, **costs})
            self.archive_hits += 1
        self.records.append(rec)
        self.seen.add(arch)
        if self._progress is not None:
            self._progress.update(self._task, advance=1,
                                  info=f"{self.evaluations} evaluated, {self.archive_hits} from archive")
        return rec
