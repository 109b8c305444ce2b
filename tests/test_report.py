import pytest

from flexnas import spaces
from flexnas.arch import Arch
from flexnas.errors import DataError
from flexnas.report import format_table, write_report
from flexnas.search import Constraint, Record
from flexnas.search.base import best_per_target

PNG = b"\x89PNG\r\n\x1a\n"


def _records():
    rows = [  # (macs, params, accuracy)
        (150e6, 2.0e6, 0.61), (210e6, 2.5e6, 0.66), (250e6, 3.1e6, 0.70), (290e6, 3.4e6, 0.69),
        (320e6, 3.9e6, 0.74), (380e6, 4.4e6, 0.745), (420e6, 5.0e6, 0.76), (260e6, 3.0e6, 0.64),
    ]
    return [Record(arch=Arch("proxyless", (i, i)), text=f"k3e{i}-k5e{i}", order=i,
                   metrics={"macs": m, "params": p, "accuracy": a}) for i, (m, p, a) in enumerate(rows)]


def _best(records):
    return best_per_target(records, [Constraint.parse(t) for t in ("macs<=300M", "params<=4.5M", "macs>=400M")])


def test_report_table_rows_and_pictures(tmp_path):
    records = _records()
    best = _best(records)
    assert {k: r.order for k, r in best.items()} == {"macs<=300M": 2, "params<=4.5M": 5, "macs>=400M": 6}
    space = spaces.get("proxyless", input_size=8, num_classes=10, width_mult=0.25)
    path = write_report(tmp_path / "run", space, records, best, title="demo run",
                        pairs=[("params", "accuracy"), ("macs", "params")])
    assert path == tmp_path / "run" / "report.md"
    text = path.read_text()
    assert text.startswith("# demo run\n")
    assert "Space: proxyless space: 21 searchable layers" in text
    assert "Evaluated architectures: 8; on the macs/accuracy Pareto front: 6." in text
    assert "| `macs<=300M` | `k3e2-k5e2` | 250.00 | 3.10 | 70.00 | 5 |" in text
    assert "| `params<=4.5M` | `k3e5-k5e5` | 380.00 | 4.40 | 74.50 | 7 |" in text
    assert "| `macs>=400M` | `k3e6-k5e6` | 420.00 | 5.00 | 76.00 | 1 |" in text
    # the Pareto table lists the front, cheapest first, and leaves the dominated out
    front_rows = [line for line in text.splitlines() if line.startswith("| ") and line.count("|") == 4][1:]
    assert [row.split("`")[1] for row in front_rows] == [
        "k3e0-k5e0", "k3e1-k5e1", "k3e2-k5e2", "k3e4-k5e4", "k3e5-k5e5", "k3e6-k5e6"]
    for name in ("pareto.png", "pareto_params.png", "pareto_macs_params.png"):
        png = tmp_path / "run" / name
        assert png.read_bytes()[:8] == PNG and png.stat().st_size > 5000
        assert f"]({name})" in text
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "pareto.png", "pareto_macs_params.png", "pareto_params.png", "report.md"]  # no temp files left


def test_report_mentions_targets_nobody_met(tmp_path):
    records = _records()
    best = best_per_target(records, [Constraint.parse("macs<=300M"), Constraint.parse("macs<=100M")])
    text = write_report(tmp_path, None, records, best, targets=["macs<=100M"]).read_text()
    assert "No evaluated arch met: `macs<=100M`." in text
    assert "Space:" not in text
    assert (tmp_path / "pareto.png").stat().st_size > 0


def test_format_table():
    table = format_table(_best(_records()))
    lines = table.splitlines()
    assert lines[0].split() == ["target", "MACs", "(M)", "params", "(M)", "accuracy", "(%)", "arch"]
    assert lines[1].split() == ["macs<=300M", "250.00", "3.10", "70.00", "k3e2-k5e2"]
    assert lines[3].split() == ["macs>=400M", "420.00", "5.00", "76.00", "k3e6-k5e6"]
    assert len({line.index("k3e") for line in lines[1:]}) == 1  # the arch column is aligned
    assert format_table({}) == "no arch met any target"


def test_report_errors(tmp_path):
    with pytest.raises(DataError, match="no evaluated archs"):
        write_report(tmp_path, None, [], {})
    with pytest.raises(DataError, match=r"cannot plot 'latency_ms'.*\['accuracy', 'macs', 'params'\]"):
        write_report(tmp_path, None, _records(), {}, pairs=[("latency_ms", "accuracy")])
