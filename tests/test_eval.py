"""`flexnas eval` / `evaluate_model`: top-1 / top-5 / loss computed right, on checkpoints of `flexnas train`."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flexnas.cli import main
from flexnas.errors import CheckpointError, ConfigError, DataError
from flexnas.evaluate import evaluate_model
from flexnas.scratch import ScratchRun, evaluate_checkpoint, load_model, load_scratch_config

ARCH = "-".join(["k3e3", "skip", "skip", "skip"] * 5 + ["k3e3"])


class LookupModel(nn.Module):
    """Returns a fixed row of logits per sample; the sample's 'image' holds its row index."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("logits", logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[x[:, 0, 0, 0].long()]


def test_top1_top5_and_loss_on_a_known_model():
    logits = torch.tensor([
        [9.0, 1, 2, 3, 4, 5, 6],   # label 0: rank 1
        [1.0, 2, 9, 8, 7, 6, 5],   # label 3: rank 2
        [7.0, 6, 5, 4, 3, 2, 1],   # label 4: rank 5 (last of the top 5)
        [7.0, 6, 5, 4, 3, 2, 1],   # label 6: rank 7
        [0.0, 0.5, 3, 1, 2, 4, 5],  # label 5: rank 2
    ])
    labels = torch.tensor([0, 3, 4, 6, 5])
    x = torch.arange(5, dtype=torch.float32).view(5, 1, 1, 1).expand(5, 3, 2, 2).contiguous()
    batches = [(x[:3], labels[:3]), (x[3:], labels[3:])]  # two batches of unequal size
    m = evaluate_model(LookupModel(logits), batches, "cpu")
    assert m["top1"] == pytest.approx(1 / 5) and m["top5"] == pytest.approx(4 / 5)
    assert m["loss"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)
    assert m["images"] == 5 and m["images_per_sec"] > 0
    # fewer than 5 classes: every label is in the top 5
    small = evaluate_model(LookupModel(logits[:, :3]), [(x[:2], torch.tensor([1, 2]))], "cpu")
    assert small["top1"] == 0.5 and small["top5"] == 1.0
    with pytest.raises(DataError, match="no batches"):
        evaluate_model(LookupModel(logits), [], "cpu")


def test_eval_restores_training_mode():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(16, 3)).train()
    stats = net[1].running_mean.clone()
    evaluate_model(net, [(torch.randn(4, 3, 2, 2), torch.tensor([0, 1, 2, 0]))])
    assert net.training and torch.equal(net[1].running_mean, stats)  # eval mode: BN statistics untouched


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    cfg = load_scratch_config("configs/train_digits.yaml", [
        f"runs_dir={root}", "name=tiny", f"arch={ARCH}", "space.width_mult=0.25", "threads=1", "device=cpu",
        "train.epochs=1", "data.max_train=200", "train.strategy_args={ema_decay: 0.5}"])
    metrics = ScratchRun.create(cfg, progress=False).train()
    return root / "tiny", metrics


def test_eval_of_a_run_matches_its_training_metrics(trained, capsys):
    folder, metrics = trained
    torch.set_num_threads(1)
    for target in (folder, folder / "model.pt", folder / "checkpoint.pt"):  # checkpoint: its EMA weights
        out = evaluate_checkpoint(target, device="cpu")
        assert out["top1"] == pytest.approx(metrics["test_top1"]) and out["top5"] == pytest.approx(metrics["test_top5"])
        assert out["loss"] == pytest.approx(metrics["test_loss"], rel=1e-5) and out["images"] == 359
    val = evaluate_checkpoint(folder, split="val", overrides=["max_test=50"], device="cpu")
    assert val["split"] == "val" and val["images"] == 40  # 20% of the 200 training images
    assert evaluate_checkpoint(folder, overrides=["max_test=50"], device="cpu")["images"] == 50
    model, meta = load_model(folder)
    assert meta["arch"] == ARCH and not model.training
    assert main(["eval", str(folder), "--json", "--device", "cpu", "max_test=30"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["images"] == 30 and 0 <= row["top1"] <= row["top5"] <= 1


def test_eval_errors(trained, tmp_path, capsys):
    folder, _ = trained
    with pytest.raises(ConfigError, match="unknown split 'tset'.*did you mean 'test'"):
        evaluate_checkpoint(folder, split="tset")
    with pytest.raises(DataError, match="the model takes 8x8 images, the data gives 16x16: set resize=8"):
        evaluate_checkpoint(folder, overrides=["resize=16"], device="cpu")
    with pytest.raises(CheckpointError, match="holds no model.pt or checkpoint.pt"):
        load_model(tmp_path)
    # a supernet checkpoint is not a trained network
    from flexnas import spaces
    from flexnas.train import TrainConfig, Trainer

    space = spaces.get("proxyless", input_size=8, num_classes=10, width_mult=0.25)
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g))]

    class One:
        def __len__(self):
            return 1

        def epoch(self, epoch, start=0):
            return iter(data[start:])

    Trainer(space, space.supernet(), One(), TrainConfig(epochs=1), tmp_path / "sup", "cpu", seed=0,
            progress=False).fit()
    with pytest.raises(CheckpointError, match="supernet checkpoint.*flexnas train"):
        load_model(tmp_path / "sup" / "checkpoint.pt")
    assert main(["eval", str(tmp_path / "nowhere.pt")]) == 2
    assert capsys.readouterr().err.startswith("flexnas: error: no checkpoint at")
