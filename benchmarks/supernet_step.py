"""Supernet training-step time vs the same subnet as a plain network, and the BN-recalibrating
evaluator's archs per second. Prints JSON; ratios are measured in one run (goal: step ratio <= 1.15).

The supernet step runs one sampled path (`forward(x, arch)`); the plain step runs `extract(arch)`,
a standalone copy of that path, on the same batch with the same optimizer."""
from __future__ import annotations

import argparse
import json
import random
import statistics
import time

import torch
import torch.nn.functional as F

from flexnas import spaces
from flexnas.evaluate import SupernetEvaluator


def step_time(forward, params, x, y, repeats: int) -> float:
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    times = []
    for i in range(repeats + 3):
        t0 = time.perf_counter()
        loss = F.cross_entropy(forward(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if x.is_cuda:
            torch.cuda.synchronize()
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


class ListBatches:
    def __init__(self, batches):
        self.batches = batches

    def __len__(self):
        return len(self.batches)

    def epoch(self, epoch, start=0):
        return iter(self.batches[start:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--spaces", default="proxyless,spos,sgnas")
    parser.add_argument("--input-size", type=int, default=32)
    parser.add_argument("--width-mult", type=float, default=0.5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--archs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.input_size, args.input_size, generator=gen).to(device)
    y = torch.randint(0, 10, (args.batch_size,), generator=gen).to(device)
    results = {}
    for name in args.spaces.split(","):
        sharing = [("independent", {})]
        if name in ("proxyless", "mobilenetv2"):
            sharing.append(("entangled", {"weight_sharing": "entangled"}))
        for label, extra in sharing:
            space = spaces.get(name, input_size=args.input_size, num_classes=10, width_mult=args.width_mult, **extra)
            supernet = space.supernet().to(device).train()
            rng = random.Random(0)
            ratios, sup_ms, plain_ms = [], [], []
            for _ in range(args.archs):
                arch = space.sample(rng)
                plain = supernet.extract(arch).to(device).train()
                t_sup = step_time(lambda b: supernet(b, arch), supernet.parameters(), x, y, args.repeats)
                t_plain = step_time(plain, plain.parameters(), x, y, args.repeats)
                ratios.append(t_sup / t_plain)
                sup_ms.append(t_sup * 1e3)
                plain_ms.append(t_plain * 1e3)
            batches = ListBatches([(x[i:i + 16], y[i:i + 16]) for i in range(0, args.batch_size, 16)])
            evaluator = SupernetEvaluator(supernet, space, batches, batches, device, bn_batches=4)
            archs = [space.sample(rng) for _ in range(10)]
            t0 = time.perf_counter()
            for a in archs:
                evaluator.evaluate(a)
            evals_per_s = len(archs) / (time.perf_counter() - t0)
            results[f"{name}/{label}"] = {
                "supernet_step_ms": round(statistics.median(sup_ms), 2),
                "plain_step_ms": round(statistics.median(plain_ms), 2),
                "step_ratio": round(statistics.median(ratios), 3),
                "evaluator_archs_per_s": round(evals_per_s, 2),
                "evaluator_setting": f"bn_batches=4 of 16, {args.batch_size} val images",
            }
    print(json.dumps({"benchmark": "supernet_step", "device": str(device), "threads": args.threads,
                      "input_size": args.input_size, "width_mult": args.width_mult,
                      "batch_size": args.batch_size, "results": results}, indent=2))


if __name__ == "__main__":
    main()
