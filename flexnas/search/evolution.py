"""Constrained evolution as in SPOS: per target, a population that only ever holds archs meeting it.

One call serves several targets. All targets score into one shared pool (and one archive), and a
target's population is the best of *every* pooled arch that meets it, so an arch scored for one
target also feeds every other target it meets. Each generation of a target builds `mutations`
mutants of its top-`parents` archs and `crossovers` crossovers of two of them, keeping (by rejection
on vectorised costs) only new archs that meet the target.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Optional

from flexnas.arch import Arch
from flexnas.errors import ConfigError
from flexnas.search.archive import Archive
from flexnas.search.base import Evaluator, Record, SearchResult, best_per_target
from flexnas.search.constraints import Constraint, check_feasible
from flexnas.search.sampling import Sampler, Scorer, Target, meets, target_name

if TYPE_CHECKING:
    from flexnas.spaces.base import SearchSpace

__all__ = ["search"]


def _check(population: int, parents: int, mutations: int, crossovers: int, mutation_prob: float) -> None:
    for name, v, lo in (("population", population, 1), ("parents", parents, 1), ("mutations", mutations, 0),
                        ("crossovers", crossovers, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ConfigError(f"evolution: {name} must be an integer >= {lo}, got {v!r}")
    if mutations + crossovers < 1:
        raise ConfigError("evolution: mutations + crossovers must be at least 1, or no generation makes children")
    if not 0.0 < mutation_prob <= 1.0:
        raise ConfigError(f"evolution: mutation_prob must be in (0, 1], got {mutation_prob!r}")


def search(space: "SearchSpace", evaluator: Evaluator, constraints: Sequence[Constraint], budget: int,
           rng: random.Random, archive: Optional[Archive] = None, progress: bool = False,
           *, population: int = 50, parents: int = 10, mutations: int = 25, crossovers: int = 25,
           mutation_prob: float = 0.1, tag: str = "evolution", seed: Optional[int] = None) -> SearchResult:
    """Evolve one population per target until `budget` distinct archs are scored.

    Each target's initial population is drawn uniformly among archs meeting it, capped at
    `max(parents, budget // (2 * targets))` so that at least half the budget goes to evolution; a
    target too tight for uniform draws starts from the space's extreme arch and walks in by mutation.
    Targets then take turns, one generation each."""
    _check(population, parents, mutations, crossovers, mutation_prob)
    constraints = [Constraint.parse(c) for c in constraints]
    check_feasible(constraints, space.cost_model())
    sampler = Sampler(space, rng)
    targets: list[Target] = list(constraints) or [None]
    parents = min(parents, population)
    init_size = min(population, max(parents, budget // (2 * len(targets))))

    with Scorer(space, evaluator, archive, budget, tag, seed, progress) as scorer:

        def pool(t: Target) -> list[Record]:
            return [r for r in scorer.records if meets(t, r.metrics)]

        def top(t: Target, k: int) -> list[Arch]:
            return [r.arch for r in sorted(pool(t), key=lambda r: (-r.accuracy, r.order))[:k]]

        def fresh(t: Target, n: int, also: Sequence[Arch] = ()) -> list[Arch]:
            """`n` (or fewer, if the target holds fewer) new archs meeting `t`, none in `also`."""
            return sampler.fresh(t, n, scorer.seen | set(also), top(t, parents), mutation_prob)

        def score_all(archs: list[Arch]) -> None:
            for arch in archs:
                if scorer.remaining <= 0:
                    return
                if arch not in scorer.seen:
                    scorer.score(arch)

        # Initial populations, one target after the other; archs already pooled count towards each.
        for t in targets:
            if scorer.remaining <= 0:
                break
            score_all(fresh(t, init_size - len(pool(t))))

        exhausted: set[str] = set()
        turn = 0
        while scorer.remaining > 0 and len(exhausted) < len(targets):
            t = targets[turn % len(targets)]
            turn += 1
            if target_name(t) in exhausted:
                continue
            elite = top(t, parents)
            children = sampler.variants(t, elite, mutations, crossovers, mutation_prob, scorer.seen)
            if len(children) < mutations + crossovers:  # converged or boxed in: top up with fresh archs
                children += fresh(t, mutations + crossovers - len(children), children)
            if not children:
                exhausted.add(target_name(t))
                continue
            score_all(children)

    return SearchResult(records=scorer.records, best=best_per_target(scorer.records, constraints),
                        constraints=constraints, evaluations=scorer.evaluations,
                        archive_hits=scorer.archive_hits)
