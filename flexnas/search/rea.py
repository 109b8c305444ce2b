"""Regularized evolution (REA, Real et al., AAAI 2019): an *aging* population. Each cycle samples
`sample_size` members at random, mutates the best of them in exactly one choice point, adds the child
and removes the *oldest* member (not the worst), so no arch survives on one lucky score.

Constraints are handled as in the other searchers: each target keeps its own population, children
that miss the target or were already scored are redrawn, and every scored arch counts for every
target it meets (shared `Scorer` and archive).
"""
from __future__ import annotations

import random
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Optional

from flexnas.arch import Arch
from flexnas.errors import ConfigError, ConstraintError
from flexnas.search.archive import Archive
from flexnas.search.base import Evaluator, Record, SearchResult, best_per_target
from flexnas.search.constraints import Constraint, check_feasible
from flexnas.search.sampling import UNIFORM_MAX_SAMPLES, Sampler, Scorer, Target, meets, space_span

if TYPE_CHECKING:
    from flexnas.spaces.base import SearchSpace

__all__ = ["mutate_one", "search"]

MUTATION_TRIES = 50


def mutate_one(space: "SearchSpace", arch: Arch, rng: random.Random) -> Optional[Arch]:
    """`arch` with one choice point moved to another option (repaired); None if no try changed it."""
    points = [i for i, p in enumerate(space.choices) if len(p.options) > 1]
    for _ in range(MUTATION_TRIES):
        i = rng.choice(points)
        out = list(arch.choices)
        out[i] = (out[i] + rng.randrange(1, len(space.choices[i].options))) % len(space.choices[i].options)
        child = space.repair(out)
        if child != arch:
            return child
    return None


def search(space: "SearchSpace", evaluator: Evaluator, constraints: Sequence[Constraint], budget: int,
           rng: random.Random, archive: Optional[Archive] = None, progress: bool = False,
           *, population: int = 50, sample_size: int = 10, tag: str = "rea",
           seed: Optional[int] = None) -> SearchResult:
    """Score `budget` distinct archs: per target, `population` uniform draws meeting it (fewer if the
    budget is small: at most half of a target's share), then aging-evolution cycles, targets taking
    turns."""
    for name, v in (("population", population), ("sample_size", sample_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"rea: {name} must be a positive integer, got {v!r}")
    constraints = [Constraint.parse(c) for c in constraints]
    check_feasible(constraints, space.cost_model())
    sampler = Sampler(space, rng)
    cost_model = space.cost_model()
    targets: list[Target] = list(constraints) or [None]
    init_size = min(population, max(sample_size, budget // (2 * len(targets))))
    pops: list[deque[Record]] = [deque() for _ in targets]

    with Scorer(space, evaluator, archive, budget, tag, seed, progress) as scorer:

        def fresh(t: Target, n: int) -> list[Arch]:
            out = sampler.uniform(t, n, scorer.seen)
            if not out and not any(meets(t, r.metrics) for r in scorer.records):
                seeds = [a for a in sampler.seeds(t) if a not in scorer.seen]
                if not seeds:
                    assert t is not None
                    raise ConstraintError(f"rea: none of {UNIFORM_MAX_SAMPLES} uniformly drawn archs meets target "
                                          f"{t} ({space_span(space, t)}); widen the target")
                out = seeds[:n]
            return out

        def child_of(t: Target, parent: Arch) -> Optional[Arch]:
            for _ in range(MUTATION_TRIES):
                child = mutate_one(space, parent, rng)
                if child is not None and child not in scorer.seen and meets(t, cost_model.cost(child)):
                    return child
            return None

        for k, t in enumerate(targets):
            for arch in fresh(t, init_size):
                if scorer.remaining <= 0:
                    break
                pops[k].append(scorer.score(arch))

        stuck = 0
        turn = 0
        while scorer.remaining > 0 and stuck < len(targets):
            k = turn % len(targets)
            turn += 1
            pop = pops[k]
            if pop:
                contenders = rng.sample(list(pop), min(sample_size, len(pop)))
                parent = max(contenders, key=lambda r: (r.accuracy, -r.order))
                child = child_of(targets[k], parent.arch)
            else:
                child = None
            if child is None:  # converged around this parent (or empty): draw a fresh arch instead
                drawn = fresh(targets[k], 1)
                child = drawn[0] if drawn else None
            if child is None:
                stuck += 1
                continue
            stuck = 0
            pop.append(scorer.score(child))
            if len(pop) > population:
                pop.popleft()  # aging: the oldest dies, whatever its accuracy

    return SearchResult(records=scorer.records, best=best_per_target(scorer.records, constraints),
                        constraints=constraints, evaluations=scorer.evaluations,
                        archive_hits=scorer.archive_hits)
