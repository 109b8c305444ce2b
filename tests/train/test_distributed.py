"""Multi-process training: two CPU processes on gloo, launched by torchrun.

One torchrun launch runs every two-rank scenario (tests/train/ddp_worker.py) to pay the interpreter
start-up once; the checks are here.

BatchNorm and the comparison with one process: in train mode BatchNorm normalises each rank's half
batch with that half's statistics, so two ranks at batch B do not compute one process's gradient at
batch 2B (with or without DDP; SyncBatchNorm is CUDA-only). The equality check therefore freezes
BatchNorm to eval mode (normalise with the fixed running statistics), which makes every sample's
loss independent of its batch-mates; then the averaged two-rank gradient is exactly the combined
batch's gradient, and what remains to differ is float summation order. Everything else (the same
arch on every rank, the data shards and their augmentation, gradient averaging with unused
parameters, clipping, weight decay, the lr schedule) is as in real training. The other scenarios keep
real BatchNorm.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from flexnas.cli import main
from flexnas.train import TrainConfig, Trainer, load_checkpoint

from .ddp_worker import BATCH, digits, frozen_supernet
from .toydata import shallow_space

ROOT = Path(__file__).resolve().parents[2]

CLI_CONFIG = {
    "name": "ddp", "seed": 0, "device": "auto", "threads": 1,
    "space": {"name": "proxyless", "width_mult": 0.25},
    "data": {"name": "digits", "batch_size": 8, "max_train": 60, "workers": 0},    # 48 images: 3 steps
    "train": {"epochs": 1, "lr": 0.05},
}


@pytest.fixture(scope="module")
def launch(tmp_path_factory):
    """Run the two-rank scenarios once; returns (out folder, per-rank results, the launch's output)."""
    out = tmp_path_factory.mktemp("ddp")
    config = out / "tiny.yaml"
    config.write_text(yaml.safe_dump(CLI_CONFIG))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "tests.train.ddp_worker", str(out), str(config)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    return out, results, proc.stdout


def states(out: Path, name: str) -> list[dict[str, torch.Tensor]]:
    return [torch.load(out / f"{name}_rank{r}.pt") for r in range(2)]


def assert_equal_states(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_ranks_end_identical_and_equal_one_process_on_the_combined_batch(launch, tmp_path):
    out, _, _ = launch
    rank0, rank1 = states(out, "frozen")
    assert_equal_states(rank0, rank1)      # bit-identical, although rank 1 was initialised differently

    # One process, batch 2B: the same images and augmentations, in the same steps.
    net = frozen_supernet(init_seed=0)
    cfg = TrainConfig(epochs=2, lr=0.1, warmup_epochs=0.5, checkpoint_every_steps=2)
    Trainer(shallow_space(), net, digits(0, 1, 2 * BATCH), cfg, tmp_path, "cpu", seed=0, progress=False).fit()
    single, init = net.state_dict(), frozen_supernet(init_seed=0).state_dict()
    moved = 0
    for key, value in single.items():
        torch.testing.assert_close(rank0[key], value, rtol=1e-4, atol=1e-5, msg=key)
        moved += int(not torch.equal(value, init[key]))
    assert moved > 10   # training changed many tensors, so the comparison is not vacuous


def test_resume_under_two_ranks_equals_an_unstopped_run(launch):
    out, results, _ = launch
    assert all(r["killed_at"] == 5 for r in results)
    full, resumed = states(out, "full"), states(out, "resumed")
    assert_equal_states(full[0], full[1])          # real BatchNorm too: running statistics included
    assert_equal_states(resumed[0], resumed[1])
    assert_equal_states(full[0], resumed[0])
    assert results[0]["resumed_final"] == results[1]["resumed_final"]
    saved = load_checkpoint(out / "killed" / "checkpoint.pt")
    assert saved["meta"]["world_size"] == 2 and len(saved["rng_ranks"]) == 2
    assert_equal_states(saved["supernet"], full[0])


def test_ranks_with_different_configs_refuse_to_start(launch):
    _, results, _ = launch
    for r in results:
        assert "ranks of this launch disagree" in r["mismatch"]
        assert "config.lr: rank 0 has 0.1, rank 1 has 0.2" in r["mismatch"]


def test_diverged_ranks_are_caught_before_a_checkpoint(launch):
    out, results, _ = launch
    for r in results:
        assert "differs between rank 0 and rank(s) [1]" in r["diverge"]
    assert not (out / "diverge" / "checkpoint.pt").exists()


def test_torchrun_cli_trains_and_only_rank_0_writes(launch, capsys):
    out, results, stdout = launch
    assert [r["cli_exit"] for r in results] == [0, 0]
    run = out / "runs" / "ddp"
    assert stdout.count("supernet trained:") == 1
    assert len(list((run / "tb").iterdir())) == 1              # one TensorBoard event file
    assert not list(run.glob(".*.tmp"))
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["meta"]["world_size"] == 2 and state["global_step"] == 3

    # Resuming that run in one process names the field that differs, never restarts.
    code = main(["supernet", str(out / "tiny.yaml"), f"runs_dir={out / 'runs'}", "--resume", "--quiet"])
    assert code == 2
    assert "world_size: checkpoint has 2, this run has 1" in capsys.readouterr().err


def test_rank_batches_are_parts_of_the_one_process_batch():
    """Rank r's batch b is the r-th part of one process's batch b at world x batch size, augmentation
    (crop offsets) included, in every epoch; so the averaged gradient is that process's gradient."""
    ranks = [digits(r, 2, 4) for r in range(2)]
    single = digits(0, 1, 8)
    assert len(ranks[0]) == len(ranks[1]) == len(single) == 160 // 8
    for epoch in (0, 1):
        for (x0, y0), (x1, y1), (x, y) in zip(ranks[0].epoch(epoch, start=3), ranks[1].epoch(epoch, start=3),
                                              single.epoch(epoch, start=3)):
            assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)
    assert not torch.equal(next(iter(single.epoch(0)))[0], next(iter(single.epoch(1)))[0])
