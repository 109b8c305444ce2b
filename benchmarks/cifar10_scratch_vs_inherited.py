"""An arch found on reduced CIFAR-10, trained from scratch on the full train split vs its inherited weights.

Takes the arch a search chose in `--run` (default runs/cifar10_search_vs_random, written by
benchmarks/cifar10_search_vs_random.py; `--target` picks which, default its first) or `--arch`, and
  * inherited: extracts it from that run's supernet, recalibrates BatchNorm on the run's training
    batches (the run's `evaluate.bn_batches`), and scores it on the CIFAR-10 test split;
  * scratch: trains it with the CIFAR recipe of configs/train_cifar10.yaml (SGD Nesterov, cosine, label
    smoothing, weight decay 5e-4 without BN/bias decay, crop + flip + Cutout 16) on the full 50k train
    split, for as many epochs as fit in `--minutes` (measured on a probe of training steps first; when
    not even one epoch fits, on the largest class-balanced subset whose one epoch does), then scores it
    on the same test images.
Prints JSON. Full run (about 30 minutes of training on 2 CPU cores, plus decoding and evaluation):
    python benchmarks/cifar10_scratch_vs_inherited.py --minutes 30
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from flexnas.config import apply_overrides, load_yaml
from flexnas.data.augment import Normalizer
from flexnas.errors import ConfigError
from flexnas.evaluate import evaluate_model, recalibrate_bn
from flexnas.pipeline import Run
from flexnas.scratch import ScratchRun, _resolve, decode_arch
from flexnas.train import prepare_input

REPO = Path(__file__).resolve().parents[1]


def chosen_arch(run: Run, target: str | None) -> tuple[str, str]:
    path = run.dir / "chosen.json"
    if not path.is_file():
        raise ConfigError(f"{run.dir} has no chosen.json: run benchmarks/cifar10_search_vs_random.py first, "
                          f"or pass --arch")
    chosen = json.loads(path.read_text())
    key = target or next(iter(chosen))
    if key not in chosen:
        raise ConfigError(f"no arch for target '{key}' in {path}; it has: {', '.join(chosen)}")
    return chosen[key]["arch"], key


def seconds_per_step(run: ScratchRun, steps: int) -> float:
    """Wall time of one training step (forward, backward, SGD step) of a throwaway copy of the net."""
    net = run.network().to(run.device).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    batches = run.data.train.epoch(0)
    x, y = next(batches)
    times = []
    for _ in range(steps + 2):  # the first two warm up allocators and threads
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(prepare_input(x, run.device)), y.to(run.device)).backward()
        opt.step()
        times.append(time.perf_counter() - start)
    return sorted(times[2:])[len(times[2:]) // 2]


def inherited_scores(search: Run, arch, test) -> dict[str, float]:
    """The supernet's path with inherited weights, BN recalibrated on the search run's training
    batches, scored on `test` (normalised as the supernet was trained)."""
    net = search.trained_supernet().extract(arch).to(search.device)
    recalibrate_bn(net, search.data.train_eval, search.cfg.evaluate.bn_batches)
    own_norm = test.normalize
    test.normalize = Normalizer(search.data.mean, search.data.std)
    try:
        return evaluate_model(net, test, search.device)
    finally:
        test.normalize = own_norm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default=str(REPO / "runs" / "cifar10_search_vs_random"))
    parser.add_argument("--target", default=None, help="which chosen arch of --run (default: its first target)")
    parser.add_argument("--arch", default=None, help="an arch string of the run's space instead of a chosen one")
    parser.add_argument("--root", default=str(REPO.parent / "shared" / "data" / "cifar10"))
    parser.add_argument("--minutes", type=float, default=30.0, help="training time budget")
    parser.add_argument("--recipe", default=str(REPO / "configs" / "train_cifar10.yaml"))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--probe-steps", type=int, default=10)
    parser.add_argument("--inherited-only", action="store_true",
                        help="only score the inherited-weights path (no probe, no training)")
    parser.add_argument("--name", default=None, help="scratch run folder name (default: <run>_scratch_<minutes>min)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    search = Run.open(args.run, progress=False)
    arch_text, target = (args.arch, "--arch") if args.arch else chosen_arch(search, args.target)
    arch = decode_arch(search.space, arch_text)

    recipe = load_yaml(args.recipe)
    base = apply_overrides({**recipe, "space": load_yaml(Path(args.run) / "config.yaml")["space"]}, [
        f"arch={search.space.encode(arch)}", f"name={args.name or f'{search.cfg.name}_scratch_{args.minutes:g}min'}",
        f"runs_dir={Path(args.run).parent}", f"threads={args.threads}", "device=auto",
        f"data.root={args.root}", f"data.batch_size={args.batch_size}", f"train.lr={args.lr}", "data.workers=2",
        "train.checkpoint_every_steps=200"])
    probe = ScratchRun(_resolve(base), Path(base["runs_dir"]) / base["name"], progress=False)
    if args.inherited_only:
        inherited = inherited_scores(search, arch, probe.data.test)
        print(json.dumps({"benchmark": "cifar10_scratch_vs_inherited", "run": str(search.dir), "target": target,
                          "arch": search.space.encode(arch), "test_images": probe.data.test.num_images,
                          "inherited": {k: round(inherited[k], 4) for k in ("top1", "top5", "loss")}}, indent=2))
        return
    full_images = probe.data.train.num_images
    step_s = seconds_per_step(probe, args.probe_steps)
    budget_steps = args.minutes * 60 / step_s
    steps_per_epoch = len(probe.data.train)
    epochs = max(1, math.floor(budget_steps / steps_per_epoch))
    overrides = [f"train.epochs={epochs}"]
    if budget_steps < steps_per_epoch:  # not one epoch: the subset whose one epoch fits the budget
        overrides.append(f"data.max_train={max(10 * args.batch_size, int(budget_steps) * args.batch_size)}")
    cfg = _resolve(base, overrides)
    scratch = ScratchRun.create(cfg, progress=False, resume=(Path(cfg.runs_dir) / cfg.name / "checkpoint.pt").is_file())

    inherited = inherited_scores(search, arch, scratch.data.test)

    start = time.perf_counter()
    m = scratch.train(resume=(scratch.dir / "checkpoint.pt").is_file())
    train_s = time.perf_counter() - start
    print(json.dumps({
        "benchmark": "cifar10_scratch_vs_inherited", "run": str(search.dir), "target": target,
        "arch": m["arch"], "space": m["space"], "width_mult": search.space.width_mult,
        "macs_M": round(m["macs"] / 1e6, 3), "params_M": round(m["params"] / 1e6, 4),
        "search_train_images": search.data.train.num_images,
        "inherited": {"test_top1": round(inherited["top1"], 4), "test_top5": round(inherited["top5"], 4),
                      "test_loss": round(inherited["loss"], 4), "bn_batches": search.cfg.evaluate.bn_batches,
                      "supernet_epochs": search.cfg.train.epochs},
        "scratch": {"test_top1": round(m["test_top1"], 4), "test_top5": round(m["test_top5"], 4),
                    "test_loss": round(m["test_loss"], 4), "epochs": epochs,
                    "train_images": scratch.data.train.num_images, "full_train_images": full_images,
                    "budget_minutes": args.minutes, "train_s": round(train_s, 1),
                    "probe_s_per_step": round(step_s, 4), "final_train": m["train"], "run_dir": str(scratch.dir)},
        "test_images": m["test_images"],
    }, indent=2))


if __name__ == "__main__":
    main()
