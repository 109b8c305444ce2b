"""One rank of the two-process runs that tests/train/test_distributed.py checks.

Launched as `torchrun --standalone --nproc_per_node=2 -m tests.train.ddp_worker OUT CONFIG`, so the
interpreter start-up (torch, sklearn) is paid once for every scenario. Each rank writes its results
to OUT/rank{r}.json and its final weights to OUT/*_rank{r}.pt; the test compares them.

1. `cli`: `python -m flexnas supernet CONFIG` run exactly as torchrun runs it (real BatchNorm).
2. `frozen`: the Trainer API on digits with BatchNorm frozen to eval mode (see the test for why);
   each rank initialises its supernet differently, the trainer must start from rank 0's weights.
3. `full` / `resumed`: real BatchNorm; a run killed after step 5 and resumed vs one never stopped.
4. `mismatch`: rank 1 asks for another learning rate; both ranks must refuse to start.
5. `diverge`: a callback perturbs one weight on rank 1 only; the next checkpoint must refuse.
"""
from __future__ import annotations

import json
import os
import runpy
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from flexnas.data import DataConfig, build_data
from flexnas.errors import ConfigError
from flexnas.train import TrainConfig, Trainer

from .toydata import shallow_space

# Per-rank batch; the single-process reference in the test uses twice this.
BATCH = 16
DATA = dict(name="digits", max_train=200, train_portion=0.8, workers=0, seed=0)   # 160 images: 5 steps


class FrozenBN(nn.BatchNorm2d):
    """BatchNorm that always normalises with its (fixed) running statistics, even in `train()`: the
    output of a sample no longer depends on the other samples of its batch."""

    def train(self, mode: bool = True) -> "FrozenBN":
        return super().train(False)


def freeze_bn(net: nn.Module) -> nn.Module:
    for m in net.modules():
        if type(m) is nn.BatchNorm2d:
            m.__class__ = FrozenBN
    return net.train()


def frozen_supernet(init_seed: int) -> nn.Module:
    torch.manual_seed(init_seed)
    return freeze_bn(shallow_space().supernet())


def digits(rank: int, world: int, batch: int):
    return build_data(DataConfig(batch_size=batch, **DATA), rank=rank, world_size=world).train


class Killed(Exception):
    pass


def main(out: Path, config: str) -> None:
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    results: dict[str, object] = {}

    # 1. The command line, as `torchrun ... -m flexnas supernet CONFIG` runs it.
    sys.argv = ["flexnas", "supernet", config, "--quiet", f"runs_dir={out / 'runs'}"]
    try:
        runpy.run_module("flexnas", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        results["cli_exit"] = exc.code

    assert dist.is_initialized()   # flexnas joined torchrun's group and stays in it (no re-rendezvous)
    space = shallow_space()
    data = digits(rank, 2, BATCH)
    cfg = TrainConfig(epochs=2, lr=0.1, warmup_epochs=0.5, checkpoint_every_steps=2)

    # 2. Frozen BatchNorm, different initialisation per rank.
    net = frozen_supernet(init_seed=rank)
    Trainer(space, net, data, cfg, out / "frozen", "cpu", seed=0, progress=False).fit()
    torch.save(net.state_dict(), out / f"frozen_rank{rank}.pt")

    # 3. Real BatchNorm: never stopped vs killed after step 5 (last checkpoint: step 4) and resumed.
    torch.manual_seed(0)
    full = space.supernet()
    Trainer(space, full, data, cfg, out / "full", "cpu", seed=0, progress=False).fit()
    torch.save(full.state_dict(), out / f"full_rank{rank}.pt")

    def kill_after_5(trainer: Trainer) -> None:
        if trainer.global_step == 5:
            raise Killed()

    torch.manual_seed(0)
    try:
        Trainer(space, space.supernet(), data, cfg, out / "killed", "cpu", seed=0, progress=False,
                callbacks=[kill_after_5]).fit()
    except Killed:
        results["killed_at"] = 5
    torch.manual_seed(99)   # resume must not depend on the initial weights
    resumed = space.supernet()
    results["resumed_final"] = Trainer(space, resumed, data, cfg, out / "killed", "cpu", seed=0,
                                       progress=False).fit(resume=True)
    torch.save(resumed.state_dict(), out / f"resumed_rank{rank}.pt")

    # 4. Ranks launched with different configs.
    other = TrainConfig(epochs=2, lr=0.1 if rank == 0 else 0.2)
    try:
        Trainer(space, space.supernet(), data, other, out / "mismatch", "cpu", seed=0, progress=False).fit()
    except ConfigError as exc:
        results["mismatch"] = str(exc)

    # 5. A rank-dependent update must be caught at the next checkpoint, not saved as rank 0's copy.
    def nudge_rank1(trainer: Trainer) -> None:
        if trainer.rank == 1 and trainer.global_step == 1:
            with torch.no_grad():
                first = next(trainer.supernet.parameters())   # channels-last: index, do not view
                first[(0,) * first.dim()] += 1.0

    try:
        Trainer(space, space.supernet(), data, cfg, out / "diverge", "cpu", seed=0, progress=False,
                callbacks=[nudge_rank1]).fit()
    except RuntimeError as exc:
        results["diverge"] = str(exc)

    dist.destroy_process_group()
    (out / f"rank{rank}.json").write_text(json.dumps(results))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
