"""The end-to-end pipeline on digits: supernet -> search -> report, from the CLI and the API."""
import json

import pytest
import yaml

from flexnas.cli import main
from flexnas.errors import CheckpointError, ConfigError, DataError
from flexnas.pipeline import Run, load_run_config

TINY = {
    "name": "tiny", "threads": 1, "device": "cpu",
    "space": {"name": "proxyless", "width_mult": 0.25, "options": {"weight_sharing": "entangled"}},
    "data": {"name": "digits", "batch_size": 64},
    "train": {"epochs": 1, "lr": 0.05, "log_every_steps": 5},
    "evaluate": {"bn_batches": 1},
    "search": {"strategy": "evolution", "budget": 12, "population": 6, "parents": 3, "mutations": 3,
               "crossovers": 3, "targets": ["macs<=0.5M", "macs<=0.8M"]},
}


@pytest.fixture
def config_file(tmp_path):
    cfg = dict(TINY, runs_dir=str(tmp_path / "runs"))
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_cli_run_writes_the_run_folder_and_prints_the_table(config_file, tmp_path, capsys):
    assert main(["run", str(config_file), "--quiet"]) == 0
    out = capsys.readouterr().out
    run_dir = tmp_path / "runs" / "tiny"
    for name in ("config.yaml", "checkpoint.pt", "archive.sqlite", "chosen.json", "report.md", "pareto.png"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "tb").iterdir())
    chosen = json.loads((run_dir / "chosen.json").read_text())
    assert set(chosen) == {"macs<=500K", "macs<=800K"}
    for target, row in chosen.items():
        assert row["macs"] <= float(target.split("<=")[1].rstrip("K")) * 1e3
        assert 0.0 <= row["accuracy"] <= 1.0
        assert row["arch"] in out
    # the same search again replays from the archive: no new evaluations
    run = Run.open(run_dir, progress=False)
    result = run.search()
    assert result.evaluations == 0 and result.archive_hits > 0
    assert main(["report", str(run_dir)]) == 0
    # other evaluator settings would score differently: the archive's scores are not reused
    held_out = run.evaluator(split="test")   # a search's picks checked on images it never saw
    assert held_out.num_val == run.data.test.num_images
    assert 0.0 <= held_out.evaluate(result.best["macs<=800K"].arch)["accuracy"] <= 1.0
    with pytest.raises(ConfigError, match="'val' or 'test'"):
        run.evaluator(split="train")
    # a test split of another size (benchmarks score held-out accuracy on more images than max_test)
    assert run.evaluator(split="test", test_images=50).num_val == 50
    with pytest.raises(ConfigError, match="pass split='test'"):
        run.evaluator(test_images=50)
    with pytest.raises(DataError, match="another supernet checkpoint or evaluator"):
        Run.open(run_dir, ["evaluate.bn_batches=2"], progress=False).search()


def test_stage_commands_and_errors(config_file, tmp_path, capsys):
    assert main(["supernet", str(config_file), "--quiet", "train.epochs=1"]) == 0
    run_dir = tmp_path / "runs" / "tiny"
    # training again without --resume refuses instead of overwriting
    assert main(["supernet", str(config_file), "--quiet"]) == 2
    assert "--resume" in capsys.readouterr().err
    # a different training config in the same folder is refused, naming the section
    assert main(["supernet", str(config_file), "--quiet", "train.lr=0.2", "--resume"]) == 2
    assert "different 'train' config" in capsys.readouterr().err
    # infeasible targets fail at once with the feasible range
    assert main(["search", str(run_dir), "--target", "macs<=1K", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "infeasible" in err and "MACs" in err
    assert main(["search", str(run_dir), "--target", "macs<=0.8M", "--budget", "8", "--quiet"]) == 0


def test_config_typos_and_missing_runs(config_file, tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        load_run_config(config_file, ["train.epoch=3"])
    with pytest.raises(ConfigError, match="not a run folder"):
        Run.open(tmp_path / "nowhere")
    cfg = load_run_config(config_file)
    run = Run.create(cfg, progress=False)
    with pytest.raises(CheckpointError, match="no trained supernet"):
        run.trained_supernet()
