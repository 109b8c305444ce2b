"""Export: a tiny trained run -> pt / torchscript / onnx files with a model card, checked at export time;
flexnas.load rebuilds the model from the card; bad input fails with a clear flexnas error."""
import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import flexnas
from flexnas.cli import main
from flexnas.errors import ArchError, CheckpointError, ConfigError, ExportError
from flexnas.export import export_network, export_subnet
from flexnas.config import from_dict
from flexnas.pipeline import Run, RunConfig
from tests.conftest import drawn_latency_bound

TINY = {
    "name": "exp", "threads": 1, "device": "cpu",
    "space": {"name": "proxyless", "width_mult": 0.25, "options": {"weight_sharing": "entangled"}},
    "data": {"name": "digits", "batch_size": 64, "max_train": 512},
    "train": {"epochs": 1, "lr": 0.05, "log_every_steps": 5},
    "evaluate": {"bn_batches": 1, "max_val_batches": 1},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("export")
    run = Run.create(from_dict(RunConfig, dict(TINY, runs_dir=str(root))), progress=False)
    run.train_supernet()
    return run


@pytest.fixture(scope="module")
def arch(run):
    import random

    return run.space.encode(run.space.sample(random.Random(0)))


@pytest.mark.parametrize("fmt", ["pt", "torchscript", "onnx"])
def test_export_round_trip(run, arch, fmt, tmp_path):
    res = export_subnet(run, arch, format=fmt, out=tmp_path)
    card = res.card
    assert res.model_path.is_file() and res.card_path == tmp_path / f"model.{fmt}.json"
    assert card["arch"] == arch and card["space"]["name"] == "proxyless"
    assert card["space"]["args"]["width_mult"] == 0.25 and card["space"]["args"]["input_size"] == 8
    cost = run.space.cost_model().cost(run.space.decode(arch))
    assert card["macs"] == int(cost["macs"]) and card["params"] == int(cost["params"])
    assert card["check"]["passed"] and card["check"]["max_abs_diff"] <= 1e-4
    assert card["accuracy"]["split"] == "search-val" and 0 <= card["accuracy"]["top1"] <= 1
    assert len(card["run"]["config_hash"]) == 12 and card["data"]["name"] == "digits"
    # the exported net is the evaluator's path: extracted and BN-recalibrated
    evaluator = run.evaluator()
    x = torch.cat([b for b, _ in evaluator.val])[:5]
    with torch.no_grad():
        want = evaluator.path(run.space.decode(arch))(x)
        assert torch.allclose(res.model(x), want, atol=1e-6)
        raw = run.trained_supernet().extract(run.space.decode(arch)).eval()(x)
    assert not torch.allclose(raw, want, atol=1e-4), "BN statistics were not recalibrated"
    assert card["accuracy"]["top1"] == pytest.approx(evaluator.evaluate(run.space.decode(arch))["accuracy"])
    # load() rebuilds from the card alone, from the card, the model file or the folder
    for where in (res.card_path, res.model_path, tmp_path):
        net = flexnas.load(where)
        with torch.no_grad():
            assert torch.equal(net(x), res.model(x))
        assert net.card["arch"] == arch
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(res.model_path), providers=["CPUExecutionProvider"])
        got = session.run(None, {"input": x.numpy()})[0]
        assert np.abs(got - want.numpy()).max() <= 1e-4
        assert card["onnx"]["opset"] == 17
    if fmt == "torchscript":
        with torch.no_grad():
            assert (torch.jit.load(str(res.model_path))(x) - want).abs().max() <= 1e-4


def test_eval_takes_an_exported_model(run, arch, tmp_path, capsys):
    from flexnas.evaluate import evaluate_model
    from flexnas.scratch import evaluate_checkpoint

    res = export_subnet(run, arch, format="onnx", out=tmp_path)
    want = evaluate_model(flexnas.load(res.card_path), run.data.test, "cpu")
    for where in (res.card_path, res.model_path, tmp_path):
        out = evaluate_checkpoint(where, device="cpu")
        assert out["arch"] == arch and out["data"] == "digits" and out["images"] == want["images"]
        assert out["top1"] == pytest.approx(want["top1"]) and out["loss"] == pytest.approx(want["loss"], rel=1e-5)
    assert main(["eval", str(res.card_path), "--json", "--device", "cpu", "max_test=40"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 40


def test_target_export_and_latency_search_from_cli(run, tmp_path, capsys):
    table = tmp_path / "lat.json"
    assert main(["profile", "proxyless", "--input-size", "8", "--num-classes", "10", "--width-mult", "0.25",
                 "--threads", "1", "--warmup", "0", "--repeats", "1", "--out", str(table), "--quiet"]) == 0
    bound = drawn_latency_bound(run.space, run.space.cost_model(latency=table))
    target = f"latency_ms<={bound:.4f}"
    assert main(["search", str(run.dir), "--target", target, "--strategy", "random", "--budget", "3", "--quiet",
                 "--latency-table", str(table)]) == 0
    capsys.readouterr()
    chosen = json.loads((run.dir / "chosen.json").read_text())
    (key, row), = chosen.items()
    assert row["latency_ms"] <= float(f"{bound:.4f}")
    out = tmp_path / "exp"
    assert main(["export", str(run.dir), "--target", target, "--format", "onnx", "--out", str(out)]) == 0
    assert "max abs diff" in capsys.readouterr().out
    card = json.loads((out / "model.onnx.json").read_text())
    assert card["arch"] == row["arch"] and card["target"] == target
    assert card["latency_table"]["fingerprint_id"] and card["latency_ms"] == pytest.approx(row["latency_ms"])
    # a target the run never searched
    assert main(["export", str(run.dir), "--target", "macs<=1K", "--out", str(out)]) == 2
    assert "chose no arch" in capsys.readouterr().err


def test_bad_input(run, arch, tmp_path, capsys):
    with pytest.raises(ArchError, match="is a spos arch.*proxyless"):
        export_subnet(run, "-".join(["shuffle3"] * 20), out=tmp_path)
    assert main(["export", str(run.dir), "--arch", "-".join(["shuffle3"] * 20), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "spos" in err
    with pytest.raises(ConfigError, match="did you mean 'onnx'"):
        export_subnet(run, arch, format="onxx", out=tmp_path)

    class Sampler(torch.nn.Module):  # grid_sampler needs ONNX opset 16
        def forward(self, x):
            return F.grid_sample(x, torch.zeros(x.shape[0], 2, 2, 2), align_corners=False)

    with pytest.raises(ExportError, match="opset 13 cannot express aten::grid_sampler.*--opset 16"):
        export_network(Sampler(), {}, "onnx", tmp_path / "g", torch.randn(2, 3, 4, 4), opset=13)
    with pytest.raises(ExportError, match="outside"):
        export_subnet(run, arch, format="onnx", out=tmp_path, opset=99)

    res = export_subnet(run, arch, format="pt", out=tmp_path / "ok")
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(res.model_path, lone / "model.pt")
    with pytest.raises(CheckpointError, match="no model card beside it"):
        flexnas.load(lone / "model.pt")
    with pytest.raises(CheckpointError, match="supernet training checkpoint"):
        flexnas.load(run.checkpoint_path)
    # weights overwritten by another export no longer match the card
    torch.save({k: v + 1 for k, v in torch.load(res.model_path).items()}, res.model_path)
    with pytest.raises(CheckpointError, match="sha256"):
        flexnas.load(res.card_path)
