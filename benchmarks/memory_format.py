"""Channels-last vs contiguous (NCHW) layout on this device: one supernet training step (single path,
forward + backward + SGD) and one BN-recalibrating path evaluation, per space, measured in one run.
Prints JSON with the medians and the ratios NCHW / channels-last (> 1: channels-last is faster).

    python benchmarks/memory_format.py --threads 1

Why it exists: flexnas trains and evaluates in channels-last on every device (TrainConfig.channels_last,
SupernetEvaluator). On CPU, PyTorch's depthwise convolutions are much slower in NCHW at these sizes.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import time

import torch
import torch.nn.functional as F

from flexnas import spaces
from flexnas.evaluate import evaluate_model, recalibrate_bn

SPACES = [("proxyless", {"weight_sharing": "entangled"}), ("spos", {}), ("sgnas", {}), ("fbnet", {})]


def layout(t: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def step_seconds(space, channels_last: bool, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    net = space.supernet().train()
    net = net.to(memory_format=torch.channels_last) if channels_last else net
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x, rng, times = layout(x, channels_last), random.Random(0), []
    for _ in range(steps + 2):  # two warm-up steps
        arch = space.sample(rng)
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x, arch), y).backward()
        opt.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[2:])


def eval_seconds(space, channels_last: bool, calib: list[torch.Tensor], val: list, archs: list) -> float:
    supernet = space.supernet().eval()
    calib = [layout(c, channels_last) for c in calib]
    val = [(layout(v, channels_last), t) for v, t in val]
    times = []
    for arch in archs:
        start = time.perf_counter()
        net = supernet.extract(arch)
        net = net.to(memory_format=torch.channels_last) if channels_last else net
        recalibrate_bn(net, calib)
        evaluate_model(net, val, "cpu", topk=1, warmup=False)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input-size", type=int, default=32)
    parser.add_argument("--width-mult", type=float, default=0.25)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--archs", type=int, default=4, help="paths evaluated per layout")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    size = args.input_size
    x = torch.randn(args.batch_size, 3, size, size, generator=g)
    y = torch.randint(0, 10, (args.batch_size,), generator=g)
    calib = [torch.randn(256, 3, size, size, generator=g) for _ in range(2)]
    val = [(torch.randn(256, 3, size, size, generator=g), torch.randint(0, 10, (256,), generator=g))
           for _ in range(4)]
    rows = []
    for name, options in SPACES:
        space = spaces.get(name, input_size=size, num_classes=10, width_mult=args.width_mult, **options)
        archs = [space.sample(random.Random(i)) for i in range(args.archs)]
        step = {cl: step_seconds(space, cl, x, y, args.steps) for cl in (False, True)}
        ev = {cl: eval_seconds(space, cl, calib, val, archs) for cl in (False, True)}
        rows.append({"space": name, "train_step_s": {"nchw": step[False], "channels_last": step[True]},
                     "train_step_ratio": step[False] / step[True],
                     "eval_s": {"nchw": ev[False], "channels_last": ev[True]},
                     "eval_ratio": ev[False] / ev[True]})
    print(json.dumps({"device": "cpu", "threads": torch.get_num_threads(), "input_size": size,
                      "width_mult": args.width_mult, "batch_size": args.batch_size,
                      "eval_images": {"calibration": 512, "validation": 1024}, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
