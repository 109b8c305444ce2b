"""Random search: archs drawn uniformly from the region each target allows (the baseline every
one-shot NAS paper reports). Named `uniform` rather than `random_search` so that the module and the
`flexnas.search.random_search` function do not shadow each other."""
from __future__ import annotations

import random
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Optional

from flexnas.arch import Arch
from flexnas.errors import ConstraintError
from flexnas.search.archive import Archive
from flexnas.search.base import Evaluator, SearchResult, best_per_target
from flexnas.search.constraints import Constraint, check_feasible
from flexnas.search.sampling import UNIFORM_MAX_SAMPLES, Sampler, Scorer, Target, meets, space_span

if TYPE_CHECKING:
    from flexnas.spaces.base import SearchSpace

__all__ = ["search"]

REFILL = 32  # archs drawn per target at a time; fixed so a replay does not depend on the budget


def search(space: "SearchSpace", evaluator: Evaluator, constraints: Sequence[Constraint], budget: int,
           rng: random.Random, archive: Optional[Archive] = None, progress: bool = False,
           *, tag: str = "random", seed: Optional[int] = None) -> SearchResult:
    """Score `budget` distinct archs, taking turns between targets; each turn draws uniformly among the
    archs meeting that target. Every scored arch counts for every target it meets, so nested targets
    (macs<=200M, macs<=300M) share evaluations. Archs already in `archive` are not re-evaluated."""
    constraints = [Constraint.parse(c) for c in constraints]
    check_feasible(constraints, space.cost_model())
    sampler = Sampler(space, rng)
    targets: list[Target] = list(constraints) or [None]
    queues: dict[int, deque[Arch]] = {i: deque() for i in range(len(targets))}
    exhausted: set[int] = set()
    with Scorer(space, evaluator, archive, budget, tag, seed, progress) as scorer:
        turn = 0
        while scorer.remaining > 0 and len(exhausted) < len(targets):
            i = turn % len(targets)
            turn += 1
            if i in exhausted:
                continue
            queue = queues[i]
            while queue and queue[0] in scorer.seen:
                queue.popleft()
            if not queue:
                queue.extend(sampler.uniform(targets[i], REFILL, scorer.seen))
                if not queue:
                    if any(meets(targets[i], r.metrics) for r in scorer.records):
                        exhausted.add(i)  # every arch meeting it that sampling can find is scored
                        continue
                    t = targets[i]
                    assert t is not None  # an unconstrained draw always succeeds
                    raise ConstraintError(
                        f"random search: none of {UNIFORM_MAX_SAMPLES} uniformly drawn archs meets target {t} "
                        f"({space_span(space, t)}); widen the target, or use strategy 'evolution', which "
                        f"also walks in from the space's extreme archs")
            scorer.score(queue.popleft())
    return SearchResult(records=scorer.records, best=best_per_target(scorer.records, constraints),
                        constraints=constraints, evaluations=scorer.evaluations,
                        archive_hits=scorer.archive_hits)
