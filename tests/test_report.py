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


def _search_run_folder(tmp_path, history=True):
    """A run folder as `flexnas run` leaves it: config, archive of evaluated archs, chosen.json."""
    import json

    import yaml

    from flexnas.pipeline import RunConfig
    from flexnas.config import from_dict, to_dict
    from flexnas.search import Archive

    folder = tmp_path / "run"
    folder.mkdir()
    cfg = from_dict(RunConfig, {"name": "run", "runs_dir": str(tmp_path), "device": "cpu",
                                "space": {"name": "proxyless", "width_mult": 0.25, "input_size": 8},
                                "data": {"name": "digits"}, "search": {"targets": ["macs<=2M"]}})
    (folder / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg)))
    space = spaces.get("proxyless", input_size=8, num_classes=10, width_mult=0.25)
    cost = space.cost_model()
    import random

    rng = random.Random(0)
    with Archive(folder / "archive.sqlite", space) as archive:
        for i in range(12):
            arch = space.sample(rng)
            archive.add(arch, {**cost.cost(arch), "accuracy": 0.5 + 0.03 * i})
    best = max(Archive(folder / "archive.sqlite", space).records(), key=lambda r: r.metrics["accuracy"])
    (folder / "chosen.json").write_text(json.dumps({"macs<=2M": {"arch": best.text}}))
    if history:
        (folder / "history.json").write_text(json.dumps(
            [{"epoch": e, "loss": 2.0 / e, "acc": 0.2 * e} for e in (1, 2, 3)]))
    return folder


def test_cli_report_draws_any_metric_pair_and_the_training_curves(tmp_path, capsys):
    from flexnas.cli import main

    folder = _search_run_folder(tmp_path)
    assert main(["report", str(folder), "--x", "params", "--x", "macs", "--y", "accuracy"]) == 0
    text = (folder / "report.md").read_text()
    for name in ("pareto.png", "pareto_params.png", "curves.png"):
        assert (folder / name).read_bytes()[:8] == PNG and f"]({name})" in text, name
    assert text.count("](pareto.png)") == 1  # --x macs is the main picture, not drawn twice
    assert "| `macs<=2M` |" in text
    # a metric the archive does not hold: one line, exit 2
    assert main(["report", str(folder), "--x", "latency_ms"]) == 2
    assert "cannot plot 'latency_ms'" in capsys.readouterr().err


def test_history_falls_back_to_tensorboard_scalars(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    from flexnas.report import load_history

    assert load_history(tmp_path) == []
    writer = SummaryWriter(str(tmp_path / "tb"))
    for epoch, (loss, acc) in enumerate([(2.0, 0.1), (1.5, 0.4)], start=1):
        writer.add_scalar("train_epoch/loss", loss, epoch)
        writer.add_scalar("train_epoch/acc", acc, epoch)
        writer.add_scalar("train/loss", loss, epoch * 10)  # per-step scalars are not epochs
    writer.close()
    history = load_history(tmp_path)
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[1]["loss"] == pytest.approx(1.5) and history[1]["acc"] == pytest.approx(0.4)
    (tmp_path / "history.json").write_text("[{")
    with pytest.raises(DataError, match="not a valid history file"):
        load_history(tmp_path)
