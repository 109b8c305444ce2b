import random

import pytest

from flexnas.arch import Arch
from flexnas.config import from_dict
from flexnas.errors import ConfigError, ConstraintError, DataError
from flexnas.search import (Archive, Constraint, Record, SearchConfig, SearchResult, evolution_search, random_search,
                            run_search)
from flexnas.search.base import best_per_target, pareto_front

from .fakes import CostEvaluator, OpCountEvaluator

SMALL = dict(population=12, parents=4, mutations=6, crossovers=6)


def _targets(space):
    """Targets inside the space's cost range: one that uniform sampling rarely hits, one on params, a band."""
    lo, hi = space.cost_range("macs")
    p_lo, p_hi = space.cost_range("params")
    return [Constraint("macs", None, round(lo + 0.35 * (hi - lo), -3)),
            Constraint("params", None, round(p_lo + 0.4 * (p_hi - p_lo), -3)),
            Constraint("macs", round(lo + 0.45 * (hi - lo), -3), round(lo + 0.5 * (hi - lo), -3))]


def _run(strategy, space, evaluator, constraints, budget, seed=0, archive=None):
    rng = random.Random(seed)
    if strategy == "random":
        return random_search(space, evaluator, constraints, budget, rng, archive)
    return evolution_search(space, evaluator, constraints, budget, rng, archive, **SMALL)


@pytest.mark.parametrize("strategy", ["random", "evolution"])
def test_every_arch_meets_a_target_and_best_meets_its_own(space, strategy):
    constraints = _targets(space)
    ev = CostEvaluator(space)
    result = _run(strategy, space, ev, constraints, budget=60)
    assert isinstance(result, SearchResult)
    assert len(result.records) == 60 == result.evaluations and result.archive_hits == 0
    cm = space.cost_model()
    for r in result.records:
        assert r.metrics["macs"] == cm.cost(r.arch)["macs"] and r.metrics["params"] == cm.cost(r.arch)["params"]
        assert any(c.satisfied(r.metrics) for c in constraints)
        assert "loss" in r.metrics and r.text == space.encode(r.arch)
    assert set(result.best) == {str(c) for c in constraints}
    for c in constraints:
        best = result.best[str(c)]
        assert c.satisfied(best.metrics) and c.satisfied(cm.cost(best.arch))
        meeting = [r.accuracy for r in result.records if c.satisfied(r.metrics)]
        assert best.accuracy == max(meeting)
        # every target got its share of the turns
        assert len(meeting) >= 60 // (2 * len(constraints))


@pytest.mark.parametrize("strategy", ["random", "evolution"])
def test_no_duplicate_evaluations_and_deterministic(space, strategy):
    constraints = [Constraint.parse("macs<=1M"), Constraint.parse("macs<=1.2M")]
    ev = CostEvaluator(space)
    result = _run(strategy, space, ev, constraints, budget=80, seed=3)
    assert len(ev.calls) == len(set(ev.calls)) == 80
    assert len({r.arch for r in result.records}) == 80
    again = _run(strategy, space, CostEvaluator(space), constraints, budget=80, seed=3)
    assert [r.arch for r in again.records] == [r.arch for r in result.records]
    other = _run(strategy, space, CostEvaluator(space), constraints, budget=80, seed=4)
    assert [r.arch for r in other.records] != [r.arch for r in result.records]


def test_nested_targets_share_evaluations(space):
    tight, loose = Constraint.parse("macs<=1M"), Constraint.parse("macs<=1.2M")
    result = _run("evolution", space, CostEvaluator(space), [tight, loose], budget=60)
    both = [r for r in result.records if tight.satisfied(r.metrics)]
    assert both and all(loose.satisfied(r.metrics) for r in both)
    assert result.best[str(loose)].accuracy >= result.best[str(tight)].accuracy


def test_evolution_beats_random_on_a_known_objective(space):
    """Accuracy = share of layers choosing k5e3. Uniform draws sit near 1/7; evolution climbs."""
    target = [Constraint.parse("macs<=1M")]
    evo, rnd = [], []
    for seed in range(3):
        for out, strategy in ((evo, "evolution"), (rnd, "random")):
            cfg = SearchConfig(strategy=strategy, budget=100, population=16, parents=5, mutations=8, crossovers=8,
                               targets=["macs<=1M"], seed=seed)
            out.append(run_search(space, OpCountEvaluator(space), cfg).best[str(target[0])].accuracy)
    assert sum(evo) / 3 > sum(rnd) / 3 + 0.08
    assert all(e > r for e, r in zip(evo, rnd))


def test_tight_target_walks_in_from_the_cheapest_arch(space):
    """macs<=0.3M is far below anything uniform sampling produces (its 5th percentile is ~0.8M)."""
    target = Constraint.parse("macs<=0.3M")
    ev = CostEvaluator(space)
    result = _run("evolution", space, ev, [target], budget=30)
    assert len(result.records) == 30
    assert all(target.satisfied(r.metrics) for r in result.records)
    with pytest.raises(ConstraintError, match=r"random search: .*target macs<=300K.*spans 0\.209M\.\.2\.031M.*'evolution'"):
        _run("random", space, CostEvaluator(space), [target], budget=30)


@pytest.mark.parametrize("band", ["0.3M<=macs<=0.33M", "1.9M<=macs<=1.95M"])
def test_narrow_band_far_from_uniform_draws_is_entered_by_a_walk(space, band):
    """Both ends of a band away from the space's extremes: neither extreme arch meets it, and uniform
    draws (5th..95th percentile ~0.8M..1.5M) never land in it; a greedy walk from an extreme does."""
    target = Constraint.parse(band)
    result = _run("evolution", space, CostEvaluator(space), [target], budget=20)
    assert len(result.records) == 20
    assert all(target.satisfied(r.metrics) for r in result.records)


def test_target_that_cannot_be_sampled_is_named(space):
    lo, _ = space.cost_range("macs")
    # Within the range, but empty: the cheapest arch's cheapest one-choice change adds 1,152 MACs.
    band = Constraint("macs", lo + 100, lo + 1_000)
    ev = CostEvaluator(space)
    with pytest.raises(ConstraintError, match=rf"target {band} is too tight to sample.*greedy walk.*widen the target"):
        _run("evolution", space, ev, [Constraint.parse("macs<=1M"), band], budget=40)


def test_target_holding_one_arch_stops_early(space):
    lo, _ = space.cost_range("macs")
    only = Constraint("macs", None, lo)
    result = _run("evolution", space, CostEvaluator(space), [only], budget=20)
    assert 1 <= len(result.records) < 20
    assert result.best[str(only)].arch == space.smallest("macs")


@pytest.mark.parametrize("strategy", ["random", "evolution"])
def test_infeasible_target_fails_before_any_evaluation(space, strategy):
    ev = CostEvaluator(space)
    with pytest.raises(ConstraintError, match="infeasible"):
        _run(strategy, space, ev, [Constraint.parse("macs<=1M"), Constraint.parse("macs>=5M")], budget=10)
    assert ev.calls == []


@pytest.mark.parametrize("strategy", ["random", "evolution"])
def test_unconstrained_search(space, strategy):
    result = _run(strategy, space, CostEvaluator(space), [], budget=30)
    assert len(result.records) == 30
    assert list(result.best) == ["unconstrained"]
    assert result.best["unconstrained"].accuracy == max(r.accuracy for r in result.records)


def test_best_answers_any_spelling_of_a_target(space):
    result = _run("random", space, CostEvaluator(space), [Constraint.parse("macs<=0.95M")], budget=10)
    assert list(result.best) == ["macs<=950K"]
    assert result.best["macs <= 0.95m"] is result.best["macs<=950K"]
    assert "macs<=950000" in result.best and result.best.get("macs<=1M") is None
    with pytest.raises(KeyError, match="no best arch for target 'macs<=1M'"):
        result.best["macs<=1M"]


def test_progress_bar_runs(space, capsys):
    result = run_search(space, CostEvaluator(space),
                        SearchConfig(strategy="random", budget=5, targets=["macs<=1M"]), progress=True)
    assert len(result.records) == 5


# ---- config -------------------------------------------------------------------------------------------

def test_config_dispatch_and_validation(space):
    with pytest.raises(ConfigError, match="unknown search strategy 'evolutoin' \\(did you mean 'evolution'\\?\\)"):
        SearchConfig(strategy="evolutoin")
    cfg = SearchConfig(strategy="random", budget=5)
    cfg.strategy = "rnadom"
    with pytest.raises(ConfigError, match="did you mean 'random'"):
        run_search(space, CostEvaluator(space), cfg)
    for kwargs, message in [({"budget": 0}, "budget must be >= 1"), ({"mutation_prob": 0.0}, "mutation_prob"),
                            ({"mutations": 0, "crossovers": 0}, "at least 1"), ({"parents": 0}, "parents"),
                            ({"targets": ["macs<300M"]}, "use '<='")]:
        with pytest.raises((ConfigError, ConstraintError), match=message):
            SearchConfig(**kwargs)
    cfg = from_dict(SearchConfig, {"strategy": "random", "budget": 7, "targets": "macs<=1M,params<=0.3M"})
    assert cfg.targets == ["macs<=1M", "params<=0.3M"]
    result = run_search(space, CostEvaluator(space), cfg)
    assert len(result.records) == 7 and set(result.best) <= {"macs<=1M", "params<=300K"}
    assert all(r.tag == "random" and r.seed == 0 for r in result.records)


def test_evaluator_without_accuracy_is_reported(space):
    class NoAccuracy:
        def evaluate(self, arch):
            return {"top1": 0.5}

    with pytest.raises(DataError, match=r"returned \['top1'\].*must return a dict with 'accuracy'"):
        run_search(space, NoAccuracy(), SearchConfig(strategy="random", budget=3))


# ---- Pareto front on hand-made records ---------------------------------------------------------------

def _rec(i, macs, acc):
    return Record(arch=Arch("proxyless", (i,)), text=f"a{i}", metrics={"macs": macs, "accuracy": acc}, order=i)


def test_pareto_front_hand_made():
    records = [
        _rec(0, 100, 0.60),   # front
        _rec(1, 150, 0.55),   # dominated by 0
        _rec(2, 200, 0.70),   # front
        _rec(3, 200, 0.65),   # same x as 2, lower y: dominated
        _rec(4, 300, 0.70),   # same y as 2, higher x: dominated
        _rec(5, 400, 0.80),   # front
        _rec(6, 90, 0.40),    # front: cheapest
        _rec(7, 400, 0.80),   # the very same point as 5: only the earliest is kept
        _rec(8, 500, 0.79),   # dominated by 5
    ]
    front = pareto_front(records)
    assert [r.order for r in front] == [6, 0, 2, 5]
    result = SearchResult(records=records, best={})
    assert result.pareto() == front
    # Brute force: nothing in the front is dominated; everything outside it is (or duplicates a point).
    for r in records:
        dominated = any(o["macs"] <= r["macs"] and o.accuracy >= r.accuracy and
                        (o["macs"] < r["macs"] or o.accuracy > r.accuracy) for o in records)
        assert dominated == (r not in front and r.order != 7)
    # Other metric pairs: y maximised, x minimised.
    assert [r.order for r in pareto_front(records, x="accuracy", y="macs")] == [6, 1, 3, 4, 8]


def test_best_per_target_breaks_ties_by_order():
    records = [_rec(0, 100, 0.5), _rec(1, 120, 0.5), _rec(2, 300, 0.9)]
    best = best_per_target(records, [Constraint.parse("macs<=200")])
    assert best["macs<=200"].order == 0


def test_archive_records_round_trip_through_search(space):
    archive = Archive(None, space)
    result = _run("evolution", space, CostEvaluator(space), [Constraint.parse("macs<=1M")], budget=25,
                  archive=archive)
    assert [r.arch for r in archive.records()] == [r.arch for r in result.records]
    assert all(archive.get(r.arch)["accuracy"] == r.accuracy for r in result.records)
