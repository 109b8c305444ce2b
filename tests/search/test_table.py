"""Table evaluator (CSV/JSON benchmark tables), regularized evolution, and the table-search CLI."""
import json
import random
import statistics

import pytest

from flexnas import spaces
from flexnas.cli import main
from flexnas.errors import ConfigError, DataError
from flexnas.search import SearchConfig, run_search
from flexnas.search.rea import mutate_one
from flexnas.search.rea import search as rea_search
from flexnas.search.table import TableEvaluator, synthetic_table, table_search
from flexnas.search.uniform import search as random_search


@pytest.fixture(scope="module")
def nb201():
    return spaces.get("nb201", input_size=8, width_mult=0.25)


@pytest.fixture(scope="module")
def table(nb201, tmp_path_factory):
    return synthetic_table(nb201, tmp_path_factory.mktemp("t") / "nb201.csv", seed=0)


def test_synthetic_table_covers_the_space_and_evaluator_answers(nb201, table):
    ev = TableEvaluator(table, nb201)
    assert len(ev) == 15625
    arch = nb201.from_index(1)
    m = ev.evaluate(arch)
    assert set(m) >= {"accuracy", "test_accuracy", "macs", "params"} and 0.5 < m["accuracy"] < 1
    assert m["params"] == nb201.cost_model().cost(arch)["params"]
    # the structure is real: accuracy correlates with size across the table
    rows = [ev.evaluate(a) for a in ev.archs()[:2000]]
    big = [r["accuracy"] for r in rows if r["params"] > statistics.median(x["params"] for x in rows)]
    small = [r["accuracy"] for r in rows if r["params"] <= statistics.median(x["params"] for x in rows)]
    assert statistics.mean(big) > statistics.mean(small) + 0.02


def test_json_tables_index_column_percent_and_errors(nb201, tmp_path):
    a0, a1 = nb201.from_index(0), nb201.from_index(1)
    keyed = tmp_path / "keyed.json"
    keyed.write_text(json.dumps({nb201.encode(a0): {"accuracy": 0.9, "latency_ms": 3.0}}))
    assert TableEvaluator(keyed, nb201).evaluate(a0) == {"accuracy": 0.9, "latency_ms": 3.0}
    listed = tmp_path / "listed.json"
    listed.write_text(json.dumps([{"index": 1, "valid_accuracy": 91.5, "test_accuracy": 90.0}]))
    ev = TableEvaluator(listed, nb201, accuracy="valid_accuracy", scale=0.01)
    assert ev.evaluate(a1)["accuracy"] == pytest.approx(0.915) and ev.evaluate(a1)["test_accuracy"] == pytest.approx(0.9)
    with pytest.raises(DataError, match="not a fraction .* scale=0.01"):
        TableEvaluator(listed, nb201, accuracy="valid_accuracy")
    with pytest.raises(DataError, match=r"no column 'valid_acuracy' \(did you mean 'valid_accuracy'"):
        TableEvaluator(listed, nb201, accuracy="valid_acuracy")
    with pytest.raises(DataError, match="is not in table"):
        ev.evaluate(a0)
    bad = tmp_path / "bad.csv"
    bad.write_text("arch,accuracy\n|nor_conv_3x3~0|+|bogus~0|none~1|+|none~0|none~1|none~2|,0.5\n")
    with pytest.raises(DataError, match="row 2: node 2: unknown op 'bogus'"):
        TableEvaluator(bad, nb201)


def test_mutate_one_changes_exactly_one_point(nb201):
    rng = random.Random(0)
    for _ in range(20):
        a = nb201.sample(rng)
        child = mutate_one(nb201, a, rng)
        assert sum(x != y for x, y in zip(a.choices, child.choices)) == 1


def test_rea_ages_population_respects_targets_and_is_deterministic(nb201, table):
    ev = TableEvaluator(table, nb201)
    lo, hi = nb201.cost_range("params")
    target = f"params<={int(lo + 0.5 * (hi - lo))}"
    runs = [rea_search(nb201, ev, [target], 120, random.Random(3), population=20, sample_size=5) for _ in range(2)]
    assert [r.text for r in runs[0].records] == [r.text for r in runs[1].records]
    recs = runs[0].records
    assert len({r.arch for r in recs}) == 120 and all(r["params"] <= lo + 0.5 * (hi - lo) for r in recs)
    # after the 20 initial draws, (almost) every arch is a one-point mutant of an earlier one
    earlier, mutants = set(), 0
    for i, r in enumerate(recs):
        if i >= 20 and any(sum(x != y for x, y in zip(r.arch.choices, e.choices)) == 1 for e in earlier):
            mutants += 1
        earlier.add(r.arch)
    assert mutants >= 90


def test_rea_beats_random_on_the_synthetic_table(nb201, table):
    ev = TableEvaluator(table, nb201)
    best_rea, best_rand = [], []
    for seed in range(5):
        for out, fn in ((best_rea, rea_search), (best_rand, random_search)):
            result = fn(nb201, ev, [], 150, random.Random(seed))
            out.append(result.best["unconstrained"]["test_accuracy"])
    assert statistics.mean(best_rea) > statistics.mean(best_rand)


def test_rea_through_search_config_and_validation(nb201, table):
    result = run_search(nb201, TableEvaluator(table, nb201), SearchConfig(strategy="rea", budget=30, population=10,
                                                                           tournament=3, seed=1))
    assert result.evaluations == 30 and {r.tag for r in result.records} == {"rea"}
    with pytest.raises(ConfigError, match="tournament"):
        SearchConfig(strategy="rea", tournament=0)
    with pytest.raises(ConfigError, match="did you mean 'rea'"):
        SearchConfig(strategy="rae")


def test_table_search_on_nag_sampled_table(tmp_path):
    space = spaces.get("nag", input_size=8, width_mult=0.2, cells_per_stage=1)
    path = synthetic_table(space, tmp_path / "nag.json", n=300, seed=1)
    ev = TableEvaluator(path, space)
    assert len(ev) == 300
    for arch in ev.archs()[:5]:
        assert ev.evaluate(arch)["params"] == space.cost_model().cost(arch)["params"]
    # a sampled table does not cover the space: searchers stop on the first arch it lacks
    with pytest.raises(DataError, match="is not in table"):
        table_search(space, path, strategy="rea", budget=60, seed=0, population=5, tournament=2)


def test_cli_table_search_and_synth_table(tmp_path, capsys):
    out = tmp_path / "t.csv"
    assert main(["synth-table", "nb201", "--input-size", "8", "--width-mult", "0.25", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["table-search", "nb201", "--input-size", "8", "--width-mult", "0.25", "--table", str(out),
                 "--strategy", "rea", "--budget", "40", "--target", "params<=60K", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["evaluations"] == 40 and data["best"][0]["params"] <= 60e3 and "index" in data["best"][0]
    assert main(["table-search", "nb201", "--table", str(tmp_path / "missing.csv")]) == 2
    assert "does not exist" in capsys.readouterr().err
