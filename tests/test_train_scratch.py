"""`flexnas train`: one arch from scratch with the shared trainer (digits, CPU, tiny), exact resume,
the recipes' pieces (RMSprop-TF, Cutout, drop-connect, EMA) and the errors a user can cause."""
from __future__ import annotations

import json

import pytest
import torch
import yaml

from flexnas.cli import main
from flexnas.data.augment import cutout
from flexnas.errors import ArchError, CheckpointError, ConfigError, ConstraintError
from flexnas.ops.blocks import MBConv
from flexnas.scratch import ScratchRun, config_from_search_run, load_scratch_config
from flexnas.train.optim import RMSpropTF
from flexnas.train.strategies.standalone import WeightEMA, set_drop_connect

# The proxyless space's smallest shape: a k3e3 block where each stage starts, skips elsewhere.
ARCH = "-".join(["k3e3", "skip", "skip", "skip"] * 5 + ["k3e3"])
RECIPE = "configs/train_digits.yaml"


def _overrides(tmp_path, *extra: str) -> list[str]:
    return [f"runs_dir={tmp_path}", "space.width_mult=0.25", "threads=1", "device=cpu", *extra]


class Killed(Exception):
    pass


def test_tiny_arch_learns_digits_and_writes_the_run_folder(tmp_path):
    cfg = load_scratch_config(RECIPE, _overrides(tmp_path, "name=learn", f"arch={ARCH}", "train.epochs=3",
                                                 "train.lr=0.1", "train.warmup_epochs=0", "data.max_train=800"))
    run = ScratchRun.create(cfg, progress=False)
    m = run.train()
    assert m["test_top1"] > 0.5 and m["test_top5"] > m["test_top1"]  # 10 classes: chance is 0.1 / 0.5
    assert m["test_images"] == 359 and m["weights"] == "final" and m["epochs"] == 3
    folder = tmp_path / "learn"
    for name in ("config.yaml", "checkpoint.pt", "model.pt", "metrics.json", "history.json"):
        assert (folder / name).is_file(), name
    assert list((folder / "tb").iterdir())
    history = json.loads((folder / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert {"loss", "acc", "lr", "val_top1", "val_top5", "val_loss"} <= set(history[-1])
    assert history[-1]["val_top1"] > history[0]["val_top1"]
    # costs are those of the network as built, and agree with the space's cost tables
    cost = run.space.cost_model().cost(run.arch)
    assert (m["macs"], m["params"]) == (int(cost["macs"]), int(cost["params"]))
    # the saved config reproduces the run: the arch is part of it
    assert yaml.safe_load((folder / "config.yaml").read_text())["arch"] == ARCH
    # a training report from the run folder: metrics table + curves
    assert main(["report", str(folder)]) == 0
    text = (folder / "report.md").read_text()
    assert f"| test top-1 (%) | {m['test_top1'] * 100:.2f} |" in text and "](curves.png)" in text
    assert (folder / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_resume_equals_unstopped_with_ema_and_drop_connect(tmp_path):
    common = ["train.epochs=2", "train.checkpoint_every_steps=3", "data.max_train=200", "data.batch_size=16",
              "train.strategy_args={ema_decay: 0.9, drop_connect: 0.2}", f"arch={ARCH}", "data.cutout=3"]
    ref = ScratchRun.create(load_scratch_config(RECIPE, _overrides(tmp_path, "name=ref", *common)), progress=False)
    expected = ref.train()
    assert expected["weights"] == "ema"

    cfg = load_scratch_config(RECIPE, _overrides(tmp_path, "name=killed", *common))

    def kill(trainer):
        if trainer.global_step == 13:  # mid-epoch 2; the last checkpoint is step 12's
            raise Killed

    with pytest.raises(Killed):
        ScratchRun.create(cfg, progress=False).train(callbacks=[kill])
    assert not (tmp_path / "killed" / "model.pt").exists()
    with pytest.raises(CheckpointError, match="--resume"):
        ScratchRun.create(cfg, progress=False)
    got = ScratchRun.create(cfg, progress=False, resume=True).train(resume=True)
    assert got["test_top1"] == expected["test_top1"] and got["test_loss"] == expected["test_loss"]
    a = torch.load(tmp_path / "ref" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "killed" / "model.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "killed" / "history.json").read_text()) == \
        json.loads((tmp_path / "ref" / "history.json").read_text())
    # resuming with another arch is refused, naming what differs
    other = load_scratch_config(RECIPE, _overrides(tmp_path, "name=killed", *common[:-2],
                                                   "arch=" + ARCH.replace("skip", "k3e3", 1), "data.cutout=3"))
    with pytest.raises(ConfigError, match="different 'arch'"):
        ScratchRun.create(other, progress=False, resume=True)


def test_train_the_arch_a_search_chose(tmp_path, capsys):
    search_run = tmp_path / "search"
    search_run.mkdir()
    (search_run / "config.yaml").write_text(yaml.safe_dump({
        "name": "search", "runs_dir": str(tmp_path),
        "space": {"name": "proxyless", "width_mult": 0.25, "options": {"weight_sharing": "entangled"}},
        "data": {"name": "digits", "max_train": 200, "batch_size": 32}}))
    (search_run / "chosen.json").write_text(json.dumps({"macs<=1M": {"arch": ARCH, "macs": 1.5e5, "accuracy": 0.9}}))
    code = main(["train", str(search_run), "--target", "macs<=1000K", "--config", RECIPE, "train.epochs=1",
                 "threads=1", "device=cpu", "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    assert ARCH in out and "test top-1" in out
    saved = yaml.safe_load((tmp_path / "search_scratch" / "config.yaml").read_text())
    # the search run's space; the recipe's data and training (the search may have used a reduced split)
    assert saved["arch"] == ARCH and saved["space"]["width_mult"] == 0.25 and saved["data"]["max_train"] is None
    assert saved["train"]["strategy"] == "standalone" and saved["name"] == "search_scratch"
    # without a recipe: the search run's data, default training settings
    cfg = config_from_search_run(search_run, "macs<=1M")
    assert cfg.data.max_train == 200 and cfg.arch == ARCH and cfg.train.strategy == "standalone"
    # a target the search never chose names the ones it did
    with pytest.raises(ConstraintError, match=r"no arch for target 'macs<=2M'.*it has: macs<=1M"):
        config_from_search_run(search_run, "macs<=2M")
    assert main(["train", str(search_run), "--quiet"]) == 2
    assert "--target" in capsys.readouterr().err
    (search_run / "chosen.json").unlink()
    with pytest.raises(ConfigError, match="no chosen.json"):
        config_from_search_run(search_run, "macs<=1M")


def test_bad_input_errors(tmp_path, capsys):
    sgnas_arch = "-".join(["k3"] * 19)
    cfg = load_scratch_config(RECIPE, _overrides(tmp_path, "name=bad", f"arch={sgnas_arch}"))
    with pytest.raises(ArchError, match="this is a 'sgnas' arch: use --space sgnas"):
        ScratchRun.create(cfg, progress=False)
    # the same through the CLI: one line, exit 2
    assert main(["train", RECIPE, "--arch", sgnas_arch, f"runs_dir={tmp_path}", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("flexnas: error:") and "sgnas" in err and "\n" not in err
    with pytest.raises(ConfigError, match="train.strategy must be 'standalone'"):
        load_scratch_config(RECIPE, ["train.strategy=uniform"])
    with pytest.raises(ConfigError, match="ema_decay must be in"):
        ScratchRun.create(load_scratch_config(RECIPE, _overrides(tmp_path, "train.strategy_args={ema_decay: 1.5}")),
                          progress=False).train()
    with pytest.raises(ConfigError, match="did you mean 'cutout'"):
        load_scratch_config(RECIPE, ["data.cutot=16"])
    assert main(["train", RECIPE, "--target", "macs<=1M", "--quiet"]) == 2


def test_rmsprop_tf_follows_the_tensorflow_update():
    """Two steps by hand: ms starts at 1, eps inside the root, lr inside the momentum buffer."""
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = RMSpropTF([w], lr=0.1, alpha=0.9, eps=1e-3, momentum=0.9, weight_decay=0.01)
    w0 = w.detach().clone()
    ms, mom, ref = torch.ones(2), torch.zeros(2), w0.clone()
    for g in (torch.tensor([0.5, 0.25]), torch.tensor([-1.0, 2.0])):
        w.grad = g.clone()
        opt.step()
        g = g + 0.01 * ref
        ms = 0.9 * ms + 0.1 * g * g
        mom = 0.9 * mom + 0.1 * g / torch.sqrt(ms + 1e-3)
        ref = ref - mom
    assert torch.allclose(w.detach(), ref, atol=1e-7)
    assert not torch.allclose(ref, w0)


def test_cutout_zeroes_one_clipped_square_per_image():
    x = torch.ones(64, 3, 8, 8)
    out = cutout(x, 4, torch.Generator().manual_seed(0))
    zeros = (out == 0).all(dim=1)  # the same pixels in every channel
    assert torch.equal((out == 0).any(dim=1), zeros)
    counts = zeros.flatten(1).sum(1)
    assert counts.max() == 16 and counts.min() >= 4  # a full 4x4 square, or clipped at a corner to 2x2
    for img in zeros:  # each zeroed region is one axis-aligned rectangle
        rows, cols = img.any(1).nonzero().flatten(), img.any(0).nonzero().flatten()
        assert img.sum() == len(rows) * len(cols)
    assert torch.equal(cutout(x, 0, torch.Generator()), x)


def test_drop_connect_and_ema():
    from flexnas import spaces

    space = spaces.get("proxyless", input_size=8, num_classes=10, width_mult=0.25)
    net = space.subnet(space.decode("-".join(["k3e3"] * 21)))
    n = set_drop_connect(net, 0.2)
    residual = [m for m in net.modules() if isinstance(m, MBConv) and m.use_residual]
    assert n == len(residual) >= 15  # every shape-keeping layer (plus stem / stage entries that keep it)
    assert [m.drop_connect for m in residual] == pytest.approx([0.2 * i / n for i in range(1, n + 1)])
    block = residual[-1]
    torch.nn.init.ones_(block.project[1].weight)  # zero-initialised: the branch would always be 0
    x = torch.randn(32, block.project[0].out_channels, 1, 1)
    block.train()
    torch.manual_seed(0)
    kept = [(block(x) - x).flatten(1).abs().sum(1) > 0 for _ in range(20)]
    dropped = 1 - torch.stack(kept).float().mean()
    assert 0.1 < dropped < 0.3  # the rate 0.2 of the deepest block
    block.eval()
    assert torch.equal(block(x), block(x))
    ema = WeightEMA(net, decay=0.5)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    before = [p.clone() for p in ema.model.parameters()]
    ema.update(net)
    for b, e, p in zip(before, ema.model.parameters(), net.parameters()):
        assert torch.allclose(e, 0.5 * b + 0.5 * p)
