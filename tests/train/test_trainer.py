"""The training loop: learning, exact resume, refusing wrong checkpoints, logging."""
from __future__ import annotations

import pytest
import torch

from flexnas import spaces
from flexnas.errors import CheckpointError, ConfigError
from flexnas.train import TrainConfig, Trainer, load_checkpoint, prepare_input
from flexnas.train.strategies import Strategy

from .toydata import TensorBatches, one_thread, random_batches, trained_toy_run


def tiny_space(width_mult: float = 0.25):
    return spaces.get("proxyless", input_size=8, num_classes=10, width_mult=width_mult)


def fresh_supernet(space, init_seed: int = 0):
    torch.manual_seed(init_seed)
    return space.supernet()


class Killed(Exception):
    pass


def kill_after(step: int):
    def callback(trainer: Trainer) -> None:
        if trainer.global_step == step:
            raise Killed(step)
    return callback


def test_uniform_training_reduces_loss():
    *_, losses, final = trained_toy_run()
    first, last = losses[:10], losses[-10:]
    assert sum(last) / len(last) < sum(first) / len(first) - 0.5
    assert final["acc"] > 0.4  # 10 classes: chance is 0.1
    assert final["global_step"] == 50 and final["lr"] == pytest.approx(0.0, abs=1e-12)


def test_resume_mid_epoch_is_bit_exact(tmp_path):
    """Kill a run after step 7 (its last checkpoint is the step-6 one, mid-epoch 1), resume it into a
    differently initialised supernet, and end with exactly the weights of a run never stopped."""
    space = tiny_space()
    data = random_batches(n=32, batch_size=8)  # 4 steps per epoch
    cfg = TrainConfig(epochs=2, warmup_epochs=0.5, checkpoint_every_steps=3, lr=0.1)

    ref_net = fresh_supernet(space)
    ref = Trainer(space, ref_net, data, cfg, tmp_path / "ref", "cpu", seed=3, progress=False).fit()

    killed_net = fresh_supernet(space)
    with pytest.raises(Killed):
        Trainer(space, killed_net, data, cfg, tmp_path / "run", "cpu", seed=3, progress=False,
                callbacks=[kill_after(7)]).fit()
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 2, 6)

    resumed_net = fresh_supernet(space, init_seed=123)
    resumed = Trainer(space, resumed_net, data, cfg, tmp_path / "run", "cpu", seed=3, progress=False).fit(resume=True)

    ref_state, res_state = ref_net.state_dict(), resumed_net.state_dict()
    assert ref_state.keys() == res_state.keys()
    for key in ref_state:
        assert torch.equal(ref_state[key], res_state[key]), key
    assert resumed == ref
    ref_ckpt = load_checkpoint(tmp_path / "ref" / "checkpoint.pt")
    res_ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    ref_opt, res_opt = ref_ckpt["optimizer"]["state"], res_ckpt["optimizer"]["state"]
    assert ref_opt.keys() == res_opt.keys()
    for key in ref_opt:
        assert torch.equal(ref_opt[key]["momentum_buffer"], res_opt[key]["momentum_buffer"])
    assert ref_ckpt["scheduler"]["last_epoch"] == res_ckpt["scheduler"]["last_epoch"] == 8


def test_resume_after_finish_returns_final_metrics(tmp_path):
    space = tiny_space()
    data = random_batches(n=16, batch_size=8)
    cfg = TrainConfig(epochs=1)
    first = Trainer(space, fresh_supernet(space), data, cfg, tmp_path, "cpu", seed=0, progress=False).fit()
    net = fresh_supernet(space, init_seed=5)
    again = Trainer(space, net, data, cfg, tmp_path, "cpu", seed=0, progress=False).fit(resume=True)
    assert again == first
    saved = load_checkpoint(tmp_path / "checkpoint.pt")["supernet"]
    assert all(torch.equal(saved[k], v) for k, v in net.state_dict().items())


@pytest.fixture(scope="module")
def one_step_run(tmp_path_factory):
    """A run folder holding the checkpoint of a 1-step run (space width 0.25, seed 0, uniform)."""
    run_dir = tmp_path_factory.mktemp("run")
    space = tiny_space()
    with one_thread():
        Trainer(space, fresh_supernet(space), random_batches(n=8, batch_size=8), TrainConfig(epochs=1), run_dir,
                "cpu", seed=0, progress=False).fit()
    return run_dir


class OtherStrategy(Strategy):
    name = "other"

    def step(self, ctx, x, y):
        loss = ctx.loss(ctx.forward(x, ctx.space.sample(ctx.rng)), y)
        ctx.backward(loss)
        return {"loss": loss.detach()}


@pytest.mark.parametrize("change, field", [
    (dict(space=tiny_space(width_mult=0.5)), "space.width_mult"),
    (dict(seed=1), "seed"),
    (dict(cfg=TrainConfig(epochs=1, lr=0.1)), "config.lr"),
    (dict(strategy=OtherStrategy()), "strategy"),
])
def test_resume_refuses_a_different_run(one_step_run, change, field):
    kw = dict(space=tiny_space(), cfg=TrainConfig(epochs=1), seed=0, strategy=None)
    kw.update(change)
    trainer = Trainer(kw["space"], kw["space"].supernet(), random_batches(n=8, batch_size=8), kw["cfg"],
                      one_step_run, "cpu", seed=kw["seed"], progress=False, strategy=kw["strategy"])
    with pytest.raises(CheckpointError, match=rf"{field.replace('.', '[.]')}: checkpoint has"):
        trainer.fit(resume=True)


def test_cosmetic_config_changes_may_resume(one_step_run):
    space = tiny_space()
    cfg = TrainConfig(epochs=1, log_every_steps=1, checkpoint_every_steps=7)
    Trainer(space, space.supernet(), random_batches(n=8, batch_size=8), cfg, one_step_run, "cpu", seed=0,
            progress=False).fit(resume=True)


def test_never_overwrites_or_invents_a_checkpoint(one_step_run, tmp_path):
    space = tiny_space()
    data = random_batches(n=8, batch_size=8)
    with pytest.raises(CheckpointError, match="already holds a checkpoint"):
        Trainer(space, space.supernet(), data, TrainConfig(epochs=1), one_step_run, "cpu", seed=0,
                progress=False).fit()
    with pytest.raises(CheckpointError, match="nothing to resume"):
        Trainer(space, space.supernet(), data, TrainConfig(epochs=1), tmp_path, "cpu", seed=0,
                progress=False).fit(resume=True)


def test_truncated_checkpoint_is_refused_on_resume(one_step_run, tmp_path):
    blob = (one_step_run / "checkpoint.pt").read_bytes()
    (tmp_path / "checkpoint.pt").write_bytes(blob[: len(blob) // 2])
    space = tiny_space()
    trainer = Trainer(space, space.supernet(), random_batches(n=8, batch_size=8), TrainConfig(epochs=1), tmp_path,
                      "cpu", seed=0, progress=False)
    with pytest.raises(CheckpointError, match="corrupt or truncated.*delete it to start over"):
        trainer.fit(resume=True)


class RecordingWriter:
    def __init__(self) -> None:
        self.scalars: list[tuple[str, float, int]] = []

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.append((tag, value, step))

    def flush(self) -> None:
        pass


def test_logs_scalars_and_accepts_one_channel_images(tmp_path):
    space = tiny_space()
    g = torch.Generator().manual_seed(0)
    gray = TensorBatches(torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g), 8)
    writer = RecordingWriter()
    cfg = TrainConfig(epochs=1, log_every_steps=1, warmup_epochs=1.0)
    Trainer(space, space.supernet(), gray, cfg, tmp_path, "cpu", seed=0, writer=writer, progress=False).fit()
    tags = {(tag, step) for tag, _, step in writer.scalars}
    assert {("train/loss", 1), ("train/loss", 2), ("train/acc", 2), ("train/lr", 1), ("train/images_per_sec", 2),
            ("train_epoch/loss", 1)} <= tags
    lrs = [v for tag, v, _ in writer.scalars if tag == "train/lr"]
    assert lrs == pytest.approx([0.025, 0.05])  # warmup over the epoch's 2 steps


def test_progress_bar_runs(tmp_path):
    space = tiny_space()
    Trainer(space, space.supernet(), random_batches(n=8, batch_size=8), TrainConfig(epochs=1), tmp_path, "cpu",
            seed=0, progress=True).fit()


def test_prepare_input_repeats_gray_channels():
    x = torch.arange(4.0).view(1, 1, 2, 2)
    out = prepare_input(x, torch.device("cpu"))
    assert out.shape == (1, 3, 2, 2) and all(torch.equal(out[0, c], x[0, 0]) for c in range(3))
    rgb = torch.randn(2, 3, 4, 4)
    assert prepare_input(rgb, torch.device("cpu"), channels_last=True).is_contiguous(memory_format=torch.channels_last)


class ScaledLogits(Strategy):
    """A strategy owning a parameter and its optimizer: what differentiable strategies need."""

    name = "scaled"

    def setup(self, supernet, space, device):
        self.scale = torch.nn.Parameter(torch.ones((), device=device))
        self.opt = torch.optim.SGD([self.scale], lr=0.1)

    def step(self, ctx, x, y):
        arch = ctx.space.sample(ctx.rng)
        loss = ctx.loss(ctx.forward(x, arch) * self.scale, y)
        ctx.backward(loss)
        return {"loss": loss.detach(), "scale": self.scale.detach().clone()}

    def optimizers(self):
        return [self.opt]

    def parameters(self):
        return [self.scale]

    def state_dict(self):
        return {**super().state_dict(), "scale": self.scale.detach().clone()}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        with torch.no_grad():
            self.scale.copy_(state["scale"])


def test_a_strategy_with_its_own_parameters_plugs_in_and_resumes(tmp_path):
    space = tiny_space()
    data = random_batches(n=32, batch_size=8)
    cfg = TrainConfig(epochs=1, checkpoint_every_steps=2)
    ref = ScaledLogits()
    Trainer(space, fresh_supernet(space), data, cfg, tmp_path / "ref", "cpu", seed=0, progress=False,
            strategy=ref).fit()
    assert ref.scale.item() != 1.0  # the loop stepped the strategy's optimizer
    with pytest.raises(Killed):
        Trainer(space, fresh_supernet(space), data, cfg, tmp_path / "run", "cpu", seed=0, progress=False,
                strategy=ScaledLogits(), callbacks=[kill_after(3)]).fit()
    resumed = ScaledLogits()
    Trainer(space, fresh_supernet(space), data, cfg, tmp_path / "run", "cpu", seed=0, progress=False,
            strategy=resumed).fit(resume=True)
    assert torch.equal(resumed.scale, ref.scale)


def test_strategy_space_check_runs_before_training(tmp_path):
    class OnlySpos(OtherStrategy):
        supported_spaces = frozenset({"spos"})

    space = tiny_space()
    with pytest.raises(ConfigError, match="does not support space 'proxyless'; it supports: spos"):
        Trainer(space, space.supernet(), random_batches(n=8, batch_size=8), TrainConfig(epochs=1), tmp_path, "cpu",
                seed=0, progress=False, strategy=OnlySpos())
