"""One-shot search on CIFAR-10 vs random archs of similar MACs, all scored by the same evaluator.

Trains a supernet on a class-balanced CIFAR-10 subset (../shared/data/cifar10), searches 3 MACs
targets with evolution, then samples `--random` archs whose MACs are within +-`--tolerance` of each
found arch and scores them with the same BN-recalibrating evaluator on the same search-validation
split. Prints JSON. Sized by its options to fit a CPU (defaults: about 20 minutes on 2 cores)."""
from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

from flexnas.config import apply_overrides, from_dict
from flexnas.pipeline import Run, RunConfig


def main() -> None:
    repo = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", default=str(repo.parent / "shared" / "data" / "cifar10"))
    parser.add_argument("--space", default="proxyless")
    parser.add_argument("--width-mult", type=float, default=0.25)
    parser.add_argument("--weight-sharing", default="entangled")
    parser.add_argument("--max-train", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--budget", type=int, default=60)
    parser.add_argument("--targets", default="0.3,0.45,0.6", help="fractions of the feasible MACs range")
    parser.add_argument("--random", type=int, default=10)
    parser.add_argument("--tolerance", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs-dir", default=str(repo / "runs"))
    parser.add_argument("--name", default="cifar10_search_vs_random")
    args = parser.parse_args()

    options = {"weight_sharing": args.weight_sharing} if args.space in ("proxyless", "mobilenetv2") else {}
    cfg = from_dict(RunConfig, apply_overrides({
        "name": args.name, "threads": args.threads, "runs_dir": args.runs_dir,
        "space": {"name": args.space, "width_mult": args.width_mult, "options": options},
        "data": {"name": "imagefolder", "root": args.root, "max_train": args.max_train, "max_test": 1000,
                 "batch_size": 64, "train_portion": 0.8},
        "train": {"epochs": args.epochs, "lr": 0.05, "warmup_epochs": 1, "weight_decay": 1e-4},
        "evaluate": {"bn_batches": 2},
        "search": {"strategy": "evolution", "budget": args.budget, "population": 20, "parents": 5,
                   "mutations": 10, "crossovers": 10},
    }, []))
    run = Run.create(cfg, progress=False, resume=True)
    t0 = time.perf_counter()
    final = run.train_supernet(resume=run.checkpoint_path.is_file())
    train_s = time.perf_counter() - t0
    lo, hi = run.space.cost_range("macs")
    targets = [f"macs<={(lo + float(f) * (hi - lo)) / 1e6:.2f}M" for f in args.targets.split(",")]
    t0 = time.perf_counter()
    result = run.search(targets)
    search_s = time.perf_counter() - t0
    run.report(result)

    evaluator = run.evaluator()
    cost_model = run.space.cost_model()
    rng = random.Random(1)
    rows = []
    for target in targets:
        found = result.best[target]
        macs = found["macs"]
        picks = []
        for _ in range(200_000):
            arch = run.space.sample(rng)
            if abs(cost_model.cost(arch)["macs"] / macs - 1) <= args.tolerance:
                picks.append(arch)
                if len(picks) == args.random:
                    break
        if not picks:  # the search went below what uniform sampling reaches: mutate the found arch
            while len(picks) < args.random:
                arch = run.space.mutate(found.arch, 0.3, rng)
                if abs(cost_model.cost(arch)["macs"] / macs - 1) <= args.tolerance:
                    picks.append(arch)
        accs = [evaluator.evaluate(a)["accuracy"] for a in picks]
        rows.append({"target": target, "found_arch": found.text, "found_macs_M": round(macs / 1e6, 2),
                     "found_accuracy": round(found.accuracy, 4), "random_n": len(accs),
                     "random_mean_accuracy": round(statistics.mean(accs), 4),
                     "random_max_accuracy": round(max(accs), 4),
                     "random_mean_macs_M": round(statistics.mean(cost_model.cost(a)["macs"] for a in picks) / 1e6, 2)})
    print(json.dumps({"benchmark": "cifar10_search_vs_random", "space": args.space, "width_mult": args.width_mult,
                      "weight_sharing": args.weight_sharing, "max_train": args.max_train, "epochs": args.epochs,
                      "supernet_final": final, "train_s": round(train_s), "search_s": round(search_s),
                      "evaluations": len(result.records), "macs_range_M": [round(lo / 1e6, 2), round(hi / 1e6, 2)],
                      "rows": rows, "run_dir": str(run.dir)}, indent=2))


if __name__ == "__main__":
    main()
