"""Latency tables: profiled per (layer, choice), summed exactly, vectorised, differentiable, refused when
measured on another device or for another space. Never asserts a timing."""
import json
import random

import numpy as np
import pytest
import torch

from flexnas import spaces
from flexnas.cli import main
from flexnas.cost.latency import LatencyTable, device_fingerprint, profile
from flexnas.errors import ConfigError, ConstraintError, SpaceError
from flexnas.search import Constraint, SearchConfig, check_feasible, run_search
from tests.conftest import drawn_latency_bound

TINY = dict(input_size=16, num_classes=10, width_mult=0.25)


@pytest.fixture(scope="module", params=["proxyless", "sgnas"])
def profiled(request):
    torch.set_num_threads(1)
    # SGNAS has 84 distinct modules per layer: 8 px keeps its profile short
    space = spaces.get(request.param, **dict(TINY, input_size=8 if request.param == "sgnas" else 16))
    space.plain_costs = space.cost_model()  # before any table is attached
    return space, profile(space, "cpu", threads=1, warmup=0, repeats=1)


def test_table_has_every_distinct_layer_option_and_sums_exactly(profiled):
    space, table = profiled
    assert len(table.layers) == len(space.layers)
    assert table.stem_ms > 0 and table.head_ms > 0
    assert all(ms >= 0 for row in table.layers for ms in row.values())
    cm = space.cost_model(latency=table)
    assert cm.metrics[:2] == ("macs", "params") and "latency_ms" in cm.metrics
    rng = random.Random(0)
    for _ in range(20):
        arch = space.sample(rng)
        tokens = space.encode(arch).split("-")
        by_hand = table.stem_ms + table.head_ms
        for row, layer, cfg in zip(table.layers, space.layers, space.split(arch)):
            # SGNAS spells kernel orders differently but they cost the same (one entry per cost key)
            key = space._cost_key(layer, cfg)
            by_hand += next(ms for tok, ms in row.items()
                            if space._cost_key(layer, space._decode_layer(layer, tok)) == key)
        assert cm.cost(arch)["latency_ms"] == pytest.approx(by_hand, rel=1e-12), tokens


def test_vectorised_equals_scalar_and_macs_are_unchanged(profiled):
    space, table = profiled
    plain = space.plain_costs
    cm = space.cost_model(latency=table)
    rng = random.Random(1)
    archs = [space.sample(rng) for _ in range(50)]
    batch = cm.costs(archs)
    as_array = cm.costs(np.array([a.choices for a in archs]))
    for i, arch in enumerate(archs):
        one = cm.cost(arch)
        assert batch["latency_ms"][i] == pytest.approx(one["latency_ms"], rel=1e-12)
        assert as_array["latency_ms"][i] == pytest.approx(one["latency_ms"], rel=1e-12)
        assert one["macs"] == plain.cost(arch)["macs"] and one["params"] == plain.cost(arch)["params"]
    lo, hi = cm.range("latency_ms")
    assert lo <= batch["latency_ms"].min() and batch["latency_ms"].max() <= hi
    assert cm.cost(cm.extreme("latency_ms", largest=False))["latency_ms"] == pytest.approx(lo)


def test_expected_on_one_hot_equals_cost_and_has_gradients(profiled):
    space, table = profiled
    cm = space.cost_model(latency=table)
    arch = space.sample(random.Random(2))
    one_hot = [torch.nn.functional.one_hot(torch.tensor(c), len(p.options)).double()
               for c, p in zip(arch.choices, space.choices)]
    assert float(cm.expected(one_hot)["latency_ms"]) == pytest.approx(cm.cost(arch)["latency_ms"], rel=1e-9)
    logits = [torch.zeros(len(p.options), dtype=torch.float64, requires_grad=True) for p in space.choices]
    cm.expected([l.softmax(-1) for l in logits])["latency_ms"].backward()
    assert any(float(l.grad.abs().sum()) > 0 for l in logits)


def test_save_load_round_trip_and_space_mismatch(profiled, tmp_path):
    space, table = profiled
    path = table.save(tmp_path / "t.json")
    loaded = LatencyTable.load(path)
    assert loaded.layers == table.layers and loaded.fingerprint == table.fingerprint
    a = space.sample(random.Random(3))
    assert space.cost_model(latency=path).cost(a) == space.cost_model(latency=table).cost(a)
    other = spaces.get(space.name, input_size=32, num_classes=10, width_mult=0.25)
    with pytest.raises(ConfigError, match=f"was measured for .*input {space.input_size},.*not .*input 32"):
        other.cost_model(latency=path)


def test_foreign_fingerprint_is_refused_unless_allowed(profiled, tmp_path):
    space, table = profiled
    data = table.to_dict()
    data["fingerprint"] = dict(data["fingerprint"], cpu="Imaginary CPU 9000")
    path = tmp_path / "foreign.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError) as err:
        space.cost_model(latency=path)
    msg = str(err.value)
    here = device_fingerprint("cpu", 1, 1)["cpu"]
    assert "Imaginary CPU 9000" in msg and here in msg and "--allow-foreign-table" in msg
    cm = space.cost_model(latency=path, allow_foreign_table=True)
    assert "latency_ms" in cm.metrics
    # a CUDA table on this CPU-only machine (or another GPU) is foreign too
    data["fingerprint"] = dict(device_fingerprint("cpu", 1, 1), device="cuda", gpu="Some GPU", cuda="12.0")
    path.write_text(json.dumps(data))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="Some GPU"):
            space.cost_model(latency=path)


def test_latency_targets_in_constraints_and_search(profiled):
    space, table = profiled
    cm = space.cost_model(latency=table)
    lo, hi = cm.range("latency_ms")
    bound = drawn_latency_bound(space, cm)
    assert lo < bound < hi
    c = Constraint.parse(f"latency_ms<={bound:.6f}")
    assert c.metric == "latency_ms" and c.high == pytest.approx(bound, rel=1e-6)
    check_feasible([c], cm)
    with pytest.raises(ConstraintError, match="infeasible.*ms"):
        check_feasible([Constraint.parse(f"latency_ms<={lo / 2:.6f}")], cm)

    class ByMacs:  # a stand-in evaluator: bigger nets score higher
        def evaluate(self, arch):
            return {"accuracy": cm.cost(arch)["macs"] / 1e9}

    result = run_search(space, ByMacs(), SearchConfig(strategy="random", budget=8, targets=[str(c)]))
    best = result.best[str(c)]
    assert best["latency_ms"] <= c.high


def test_calibration_is_the_median_whole_network_ratio_and_scales_every_entry(monkeypatch, tmp_path):
    import statistics
    from dataclasses import replace

    import flexnas.cost.latency as latency

    torch.set_num_threads(1)
    space = spaces.get("proxyless", **TINY)
    measured = iter([5.0, 7.0, 6.0, 9.0, 4.0])  # stand-in end-to-end timings of the 5 calibration archs
    monkeypatch.setattr(latency, "measure_latency", lambda *a, **k: next(measured))
    table = profile(space, "cpu", threads=1, warmup=0, repeats=1, calibrate=5, calibration_seed=7)
    raw = replace(table, calibration=None)
    raw_cm = spaces.get("proxyless", **TINY).cost_model(latency=raw)
    rng = random.Random(7)
    ratios = [m / raw_cm.cost(space.sample(rng))["latency_ms"] for m in (5.0, 7.0, 6.0, 9.0, 4.0)]
    assert table.calibration["scale"] == pytest.approx(statistics.median(ratios), rel=1e-5)
    assert table.scale != 1.0 and raw.scale == 1.0
    cm = space.cost_model(latency=table)
    for arch in [space.sample(random.Random(8)) for _ in range(5)]:
        assert cm.cost(arch)["latency_ms"] == pytest.approx(table.scale * raw_cm.cost(arch)["latency_ms"], rel=1e-9)
    loaded = LatencyTable.load(table.save(tmp_path / "cal.json"))
    assert loaded.calibration == table.calibration and loaded.layers == table.layers  # raw entries kept
    data = json.loads((tmp_path / "cal.json").read_text())
    data["calibration"]["scale"] = -1
    (tmp_path / "cal.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="malformed.*scale must be > 0"):
        LatencyTable.load(tmp_path / "cal.json")
    with pytest.raises(ConfigError, match="calibrate must be >= 0"):
        profile(space, repeats=1, calibrate=-1)


def test_unsupported_spaces_say_so():
    for name in ("nb201", "ofa"):
        if name not in spaces.names():
            continue
        kw = {"input_size": 16, "num_classes": 10} if name == "nb201" else {"input_size": 32, "num_classes": 10}
        with pytest.raises(SpaceError, match="latency table"):
            profile(spaces.get(name, **kw), warmup=0, repeats=1)


def test_bad_settings():
    space = spaces.get("proxyless", **TINY)
    with pytest.raises(ConfigError, match="cpu clock"):
        profile(space, threads=2, clock="cpu", repeats=1)
    with pytest.raises(ConfigError, match="statistic .mean.*did you mean .median."):
        profile(space, statistic="mean", repeats=1)
    with pytest.raises(ConfigError, match="did you mean 'float32'"):
        profile(space, dtype="float23", repeats=1)
    with pytest.raises(ConfigError, match="does not exist"):
        space.cost_model(latency="/nonexistent/table.json")


def test_cli_profile_and_cost(tmp_path, capsys):
    out = tmp_path / "t.json"
    args = ["proxyless", "--input-size", "16", "--num-classes", "10", "--width-mult", "0.25"]
    assert main(["profile", *args, "--threads", "1", "--warmup", "0", "--repeats", "1", "--out", str(out),
                 "--calibrate", "2", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "table: " in printed and "calibrated on 2 whole archs" in printed and out.is_file()
    assert json.loads(out.read_text())["calibration"]["archs"] == 2
    space = spaces.get("proxyless", **TINY)
    arch = space.encode(space.sample(random.Random(4)))
    assert main(["cost", *args, arch, "--latency-table", str(out), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    expected = space.cost_model(latency=out).cost(space.decode(arch))["latency_ms"]
    assert row["latency_ms"] == pytest.approx(expected, abs=1e-4)
    data = json.loads(out.read_text())
    data["fingerprint"]["torch"] = "0.0.1"
    out.write_text(json.dumps(data))
    assert main(["cost", *args, arch, "--latency-table", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "torch 0.0.1" in err and "--allow-foreign-table" in err
    assert main(["cost", *args, arch, "--latency-table", str(out), "--allow-foreign-table"]) == 0
