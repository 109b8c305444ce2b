import random
import sqlite3

import pytest

from flexnas import spaces
from flexnas.errors import DataError
from flexnas.search import Archive, SearchConfig, run_search

from .fakes import CostEvaluator, FailingEvaluator, Killed


def _archs(space, n, seed=0):
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        a = space.sample(rng)
        if a not in out:
            out.append(a)
    return out


def test_in_memory_add_get_records(space):
    archive = Archive(None, space)
    a, b = _archs(space, 2)
    assert len(archive) == 0 and archive.get(a) is None and a not in archive
    ra = archive.add(a, {"accuracy": 0.5, "macs": 1e6}, tag="t", seed=3)
    rb = archive.add(b, {"accuracy": 0.7, "macs": 2e6})
    assert len(archive) == 2 and a in archive
    assert archive.get(a) == {"accuracy": 0.5, "macs": 1e6}
    assert (ra.order, rb.order) == (0, 1)
    assert ra.text == space.encode(a) and ra.tag == "t" and ra.seed == 3
    assert archive.records() == [ra, rb]
    assert archive.records(tag="t") == [ra]
    # The archive is a cache of scores: a second add keeps the first.
    assert archive.add(a, {"accuracy": 0.9}) is ra
    assert archive.get(a)["accuracy"] == 0.5 and len(archive) == 2
    # get returns a copy
    archive.get(a)["accuracy"] = 0.0
    assert archive.get(a)["accuracy"] == 0.5


def test_persists_across_reopen(space, tmp_path):
    path = tmp_path / "run" / "archive.sqlite"
    archs = _archs(space, 5)
    with Archive(path, space) as archive:
        written = [archive.add(a, {"accuracy": 0.1 * i + 1 / 3, "macs": 1e6 + i}, tag="evolution", seed=7)
                   for i, a in enumerate(archs)]
    with Archive(path, space) as again:
        assert len(again) == 5
        assert again.records() == written  # metrics come back bit-exact
        assert again.get(archs[2]) == {"accuracy": 0.2 + 1 / 3, "macs": 1e6 + 2}
        new = again.add(_archs(space, 6)[-1], {"accuracy": 0.0})
        assert new.order == 5
    rows = sqlite3.connect(path).execute("SELECT arch, tag, seed FROM evaluations ORDER BY id").fetchall()
    assert rows[0] == (space.encode(archs[0]), "evolution", 7)


def test_rejects_archive_of_another_space_or_corrupt_file(space, tmp_path):
    path = tmp_path / "archive.sqlite"
    with Archive(path, space) as archive:
        archive.add(_archs(space, 1)[0], {"accuracy": 0.5})
    wider = spaces.get("proxyless", input_size=8, num_classes=10, width_mult=0.5)
    with pytest.raises(DataError, match="not ProxylessSpace.*new run folder"):
        Archive(path, wider)
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(DataError, match="not a readable flexnas archive"):
        Archive(bad, space)
    with pytest.raises(DataError, match="is a directory"):
        Archive(tmp_path, space)


def test_refuses_scores_of_another_scorer(space, tmp_path):
    path = tmp_path / "archive.sqlite"
    arch = _archs(space, 1)[0]
    with Archive(path, space, scorer="ckpt-a") as archive:
        archive.add(arch, {"accuracy": 0.5})
    with Archive(path, space, scorer="ckpt-a") as again:   # same supernet and settings: resumes
        assert again.get(arch) == {"accuracy": 0.5}
    with pytest.raises(DataError, match="another supernet checkpoint or evaluator.*move it away"):
        Archive(path, space, scorer="ckpt-b")
    with Archive(path, space) as reader:                   # reading without a scorer is allowed
        assert len(reader) == 1
    # scores written without a scorer (an older flexnas) are refused; an empty such archive is adopted
    old = tmp_path / "old.sqlite"
    with Archive(old, space) as archive:
        archive.add(arch, {"accuracy": 0.5})
    with pytest.raises(DataError, match="older flexnas"):
        Archive(old, space, scorer="ckpt-a")
    empty = tmp_path / "empty.sqlite"
    Archive(empty, space).close()
    Archive(empty, space, scorer="ckpt-a").close()
    with pytest.raises(DataError, match="another supernet"):
        Archive(empty, space, scorer="ckpt-b")


def test_non_numeric_metric_is_rejected(space):
    archive = Archive(None, space)
    with pytest.raises(DataError, match="metric 'accuracy'.*not a number"):
        archive.add(_archs(space, 1)[0], {"accuracy": "high"})
    assert len(archive) == 0


@pytest.mark.parametrize("strategy", ["random", "evolution"])
def test_killed_search_resumes_without_reevaluating(space, tmp_path, strategy):
    budget, killed_after = 40, 17
    cfg = SearchConfig(strategy=strategy, budget=budget, population=10, parents=4, mutations=5, crossovers=5,
                       targets=["macs<=0.95M", "params<=0.3M"], seed=5)
    path = tmp_path / "archive.sqlite"

    first = CostEvaluator(space)
    with Archive(path, space) as archive, pytest.raises(Killed):
        run_search(space, FailingEvaluator(first, killed_after), cfg, archive=archive)
    assert len(first.calls) == killed_after

    second = CostEvaluator(space)
    with Archive(path, space) as archive:
        assert len(archive) == killed_after
        resumed = run_search(space, second, cfg, archive=archive)
    assert len(second.calls) == budget - killed_after
    assert not set(first.calls) & set(second.calls)
    assert resumed.evaluations == budget - killed_after and resumed.archive_hits == killed_after

    # The resumed search is the search that was never interrupted.
    uninterrupted = run_search(space, CostEvaluator(space), cfg)
    assert [r.arch for r in resumed.records] == [r.arch for r in uninterrupted.records]
    assert {k: r.arch for k, r in resumed.best.items()} == {k: r.arch for k, r in uninterrupted.best.items()}

    # Running the finished config again evaluates nothing.
    third = CostEvaluator(space)
    with Archive(path, space) as archive:
        again = run_search(space, third, cfg, archive=archive)
        assert len(archive) == budget
    assert third.calls == [] and again.archive_hits == budget


def test_archive_shared_between_searches(space):
    archive = Archive(None, space)
    ev = CostEvaluator(space)
    cfg = SearchConfig(strategy="random", budget=20, targets=["macs<=1M"], seed=1)
    run_search(space, ev, cfg, archive=archive)
    more = run_search(space, ev, SearchConfig(strategy="evolution", budget=30, population=10, parents=4,
                                              mutations=5, crossovers=5, targets=["macs<=1M"], seed=2),
                      archive=archive)
    assert len(ev.calls) == len(set(ev.calls)) == len(archive)
    assert {r.tag for r in archive.records()} == {"random", "evolution"}
    assert more.evaluations + more.archive_hits == 30
