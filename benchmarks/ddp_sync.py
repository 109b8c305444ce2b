"""Gradient sync for single-path supernets: DistributedDataParallel(find_unused_parameters=True) vs
flexnas's manual all-reduce (`flexnas.train.distributed.GradSync`), W CPU processes on gloo.

Each rank runs the same training steps (the same sampled arch per step, its own random batch):
`paths` forward/backward passes per step (1 = uniform/SPOS, 3+ = fair/sandwich-like accumulation),
then one SGD step. Prints JSON: per mode, ms per step (median over ranks of the mean), values
all-reduced per step, and whether the ranks ended bit-identical. Ratios are measured in one run.

    python benchmarks/ddp_sync.py                         # small: 2 ranks, 8 steps, about a minute on 2 cores
    python benchmarks/ddp_sync.py --world 4 --steps 50 --width 1.0 --input-size 32 --batch 32 --paths 1 3
"""
from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flexnas import spaces  # noqa: E402
from flexnas.train.distributed import GradSync, fingerprint  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(rank: int, world: int, port: int, args: argparse.Namespace, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    space = spaces.get(args.space, input_size=args.input_size, num_classes=10, width_mult=args.width)
    results = {}
    for paths in args.paths:
        for mode in ("ddp", "manual"):
            torch.manual_seed(0)
            net = space.supernet()
            params = [p for p in net.parameters() if p.requires_grad]
            opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
            model = (torch.nn.parallel.DistributedDataParallel(net, find_unused_parameters=True)
                     if mode == "ddp" else net)
            sync = GradSync(torch.device("cpu"))
            g = torch.Generator().manual_seed(1000 + rank)
            times = []
            for step in range(args.warmup + args.steps):
                rng = random.Random(step)                      # the same archs on every rank
                x = torch.randn(args.batch, 3, args.input_size, args.input_size, generator=g)
                y = torch.randint(0, 10, (args.batch,), generator=g)
                dist.barrier()
                start = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                for _ in range(paths):
                    loss = torch.nn.functional.cross_entropy(model(x, space.sample(rng)), y)
                    loss.backward()
                if mode == "manual":
                    sync(params)
                opt.step()
                if step >= args.warmup:
                    times.append(time.perf_counter() - start)
            total = sum(p.numel() for p in params)
            # DDP reduces every bucket of the module after each backward (zeros for unused params).
            sent = sync.sent / (args.warmup + args.steps) if mode == "manual" else float(total * paths)
            prints = [None] * world
            dist.all_gather_object(prints, fingerprint(params))   # BN running stats are per rank in both
            results[f"{mode}_paths{paths}"] = {"ms_per_step": 1000 * statistics.mean(times),
                                               "values_reduced_per_step": sent, "params": total,
                                               "ranks_identical": len(set(prints)) == 1}
    out[rank] = results
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--space", default="proxyless")
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--input-size", type=int, default=8)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--paths", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_run, args=(args.world, _free_port(), args, out), nprocs=args.world, join=True)
        per_rank = [out[r] for r in range(args.world)]
    report: dict = {"settings": vars(args)}
    for key in per_rank[0]:
        row = {k: per_rank[0][key][k] for k in ("values_reduced_per_step", "params", "ranks_identical")}
        row["ms_per_step"] = round(statistics.median(r[key]["ms_per_step"] for r in per_rank), 2)
        report[key] = row
    for paths in args.paths:
        report[f"manual_over_ddp_time_paths{paths}"] = round(
            report[f"manual_paths{paths}"]["ms_per_step"] / report[f"ddp_paths{paths}"]["ms_per_step"], 3)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
