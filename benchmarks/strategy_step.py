"""Per-step time and peak memory of every training strategy, relative to one forward/backward of the
largest subnet as a plain network; and SGNAS's unified supernet against a multi-path supernet over
the same (kernel x expansion) choices. Prints JSON.

Peak memory: on CUDA, torch.cuda.max_memory_allocated over the steps; on CPU, each measurement runs
in a fresh process and reports its peak resident set size (ru_maxrss) minus the resident size just
before the first step, i.e. the activations, gradients and optimizer state the steps add. Times are
medians over `--repeats` steps after 2 warm-up steps, all measured in this one run.

    python benchmarks/strategy_step.py                       # CPU, 32x32, width 0.5, batch 32
    python benchmarks/strategy_step.py --device cuda --input-size 224 --width-mult 1.0 --batch-size 64
"""
from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

import torch
import torch.nn.functional as F

STRATEGIES = {   # label -> (strategy, arguments)
    "uniform": ("uniform", {}),
    "fair": ("fair", {}),
    "sandwich": ("sandwich", {"num_random": 2}),
    "sandwich_bestup": ("sandwich", {"num_random": 2, "attentive": "bestup"}),
    "differentiable_gumbel": ("differentiable", {"mixture": "gumbel"}),
    "dsnas": ("dsnas", {}),
}


def multipath_sgnas(input_size: int, width_mult: float) -> Any:
    """The SGNAS macro with one independent MBConv per (kernel, expansion) pair, plus skip: the
    multi-path way to search what the unified layer searches with shared sub-blocks."""
    from flexnas.spaces.candidate import CandidateSpace
    from flexnas.spaces.sgnas import KERNELS, SUB_BLOCKS, SGNASSpace

    class MultiPathSGNAS(CandidateSpace):
        name = "multipath_sgnas"   # not registered: built here only
        macro = SGNASSpace.macro
        ops = tuple(f"k{k}e{e}" for k in KERNELS for e in range(1, SUB_BLOCKS + 1)) + ("skip",)

    return MultiPathSGNAS(input_size=input_size, num_classes=10, width_mult=width_mult)


def build_space(name: str, args: argparse.Namespace) -> Any:
    from flexnas import spaces

    if name == "multipath_sgnas":
        return multipath_sgnas(args.input_size, args.width_mult)
    extra = {"weight_sharing": "entangled"} if name == "proxyless_entangled" else {}
    return spaces.get(name.replace("_entangled", ""), input_size=args.input_size, num_classes=10,
                      width_mult=args.width_mult, **extra)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def measure(kind: str, space_name: str, args: argparse.Namespace) -> dict[str, float]:
    """Run `repeats` + 2 steps of `kind` ('plain', 'mixture' or a STRATEGIES label); time and memory."""
    from flexnas.train import strategies
    from flexnas.train.strategies import StepContext, step_seed

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    space = build_space(space_name, args)
    torch.manual_seed(0)
    supernet = space.supernet().to(device).train()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.input_size, args.input_size, generator=g).to(device)
    y = torch.randint(0, 10, (args.batch_size,), generator=g).to(device)
    strategy = None
    if kind == "plain":
        model: Any = supernet.extract(space.largest("macs")).to(device).train()
        del supernet
        forward = model
    elif kind == "mixture":   # one forward/backward of the softmax mixture over every candidate
        model = supernet
        probs = [torch.full((len(p.options),), 1.0 / len(p.options), device=device) for p in space.choices]
        forward = lambda b: model(b, probs)  # noqa: E731
    else:
        model = supernet
        name, sargs = STRATEGIES[kind]
        strategy = strategies.get(name, **sargs)
        strategy.check_space(space)
        strategy.setup(model, space, device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    criterion = torch.nn.CrossEntropyLoss()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = rss_bytes()
    for step in range(args.repeats + 2):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        if strategy is None:
            F.cross_entropy(forward(x), y).backward()
        else:
            extra = strategy.optimizers()
            for o in extra:
                o.zero_grad(set_to_none=True)
            seed = step_seed(0, step)
            ctx = StepContext(model=model, supernet=model, space=space, criterion=criterion,
                              rng=random.Random(seed), seed=seed, device=device, epoch=0, global_step=step,
                              total_steps=args.repeats + 2, backward=lambda loss: loss.backward(),
                              step_optimizer=lambda o: o.step(), val_source=lambda: (x, y))
            strategy.step(ctx, x, y)
            for o in extra:
                o.step()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= 2:
            times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    params = sum(p.numel() for p in model.parameters())
    return {"step_ms": statistics.median(times) * 1e3, "peak_mb": max(peak, 0) / 2**20, "params_m": params / 1e6}


def run_isolated(kind: str, space: str, args: argparse.Namespace) -> dict[str, float]:
    """CPU peak RSS only means something in a fresh process; CUDA measures in-process."""
    if args.device.startswith("cuda"):
        return measure(kind, space, args)
    cmd = [sys.executable, __file__, "--one", kind, "--space", space] + [
        f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("one", "space", "spaces")]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input-size", type=int, default=32)
    parser.add_argument("--width-mult", type=float, default=0.5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--space", default="proxyless_entangled", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.space, args)))
        return

    def ratio(m: dict[str, float], ref: dict[str, float]) -> dict[str, float]:
        return {**{k: round(v, 3) for k, v in m.items()}, "time_x": round(m["step_ms"] / ref["step_ms"], 2),
                "memory_x": round(m["peak_mb"] / max(ref["peak_mb"], 1e-9), 2)}

    space = "proxyless_entangled"
    plain = run_isolated("plain", space, args)
    per_strategy = {label: ratio(run_isolated(label, space, args), plain) for label in args.strategies.split(",")}
    unified = {}
    for name in ("sgnas", "multipath_sgnas"):
        base = run_isolated("plain", name, args)
        unified[name] = {"plain_largest": {k: round(v, 3) for k, v in base.items()},
                         "uniform_step": ratio(run_isolated("uniform", name, args), base),
                         "mixture_step": ratio(run_isolated("mixture", name, args), base)}
    print(json.dumps({"benchmark": "strategy_step", "device": args.device, "threads": args.threads,
                      "input_size": args.input_size, "width_mult": args.width_mult, "batch_size": args.batch_size,
                      "space": "proxyless (entangled)", "plain_largest": {k: round(v, 3) for k, v in plain.items()},
                      "strategies": per_strategy, "sgnas_unified_vs_multipath": unified}, indent=1))


if __name__ == "__main__":
    main()
