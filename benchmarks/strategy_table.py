"""Each training strategy on the same space and data, then searched at the same 3 targets and scored
by the same BN-recalibrating evaluator (search-validation split). Prints a markdown table and JSON.

    python benchmarks/strategy_table.py                      # digits, the configs/*_digits recipes
    python benchmarks/strategy_table.py --quick              # 1 epoch each, budget 20: proves it runs
    python benchmarks/strategy_table.py --data cifar10 --max-train 10000   # reduced CIFAR-10
    python benchmarks/strategy_table.py --data cifar10 --max-train 5000 --epochs-scale 0.5 \
        --set space.width_mult=0.25 --threads 1                            # what fits a 2-core CPU

Every run is a normal run folder (runs/table_<data>_<strategy>/): a killed table resumes where it
stopped. For `differentiable` and `dsnas`, the arch the strategy derived itself is scored too.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

RECIPES = {   # strategy -> the digits recipe it starts from (all: proxyless x0.5, entangled weights)
    "uniform": "configs/quickstart.yaml",
    "fair": "configs/fairnas_digits.yaml",
    "sandwich": "configs/sandwich_digits.yaml",
    "differentiable": "configs/fbnet_digits.yaml",
    "dsnas": "configs/dsnas_digits.yaml",
}


def cifar_overrides(root: str, max_train: int) -> list[str]:
    return ["data.name=imagefolder", f"data.root={root}", f"data.max_train={max_train}", "data.batch_size=64",
            "data.workers=2", "threads=null", "evaluate.bn_batches=4", "evaluate.max_val_batches=8"]


def default_targets(cfg) -> list[str]:
    """Three MACs targets at 15%, 30% and 50% of the space's range (used off digits). Built from the
    config alone, before the run exists, for CIFAR-10's 32 px and 10 classes (as the Run's space)."""
    lo, hi = cfg.space.build(32, 10).cost_range("macs")
    return [f"macs<={(lo + f * (hi - lo)) / 1e6:.3g}M" for f in (0.15, 0.3, 0.5)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strategies", default=",".join(RECIPES))
    parser.add_argument("--data", choices=["digits", "cifar10"], default="digits")
    parser.add_argument("--root", default="../shared/data/cifar10")
    parser.add_argument("--max-train", type=int, default=10000)
    parser.add_argument("--epochs-scale", type=float, default=1.0, help="multiply every recipe's epochs")
    parser.add_argument("--budget", type=int, default=None, help="search evaluations per strategy")
    parser.add_argument("--target", action="append", default=None)
    parser.add_argument("--quick", action="store_true", help="1 epoch, budget 20 (a smoke run)")
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every strategy, e.g. --set space.width_mult=0.25 (repeatable)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: the recipe's; cifar10: all)")
    args = parser.parse_args()

    from flexnas.config import load_yaml
    from flexnas.pipeline import Run, load_run_config

    rows, summary = [], {}
    for strategy in args.strategies.split(","):
        recipe = RECIPES[strategy]
        epochs = load_yaml(recipe)["train"]["epochs"]
        epochs = 1 if args.quick else max(1, round(epochs * args.epochs_scale))
        over = [f"name=table_{args.data}_{strategy}{'_quick' if args.quick else ''}", f"runs_dir={args.runs_dir}",
                f"train.epochs={epochs}", f"device={args.device}", "train.warmup_epochs=0"]
        if strategy in ("differentiable", "dsnas"):
            over.append("train.strategy_args.warmup_epochs=0" if args.quick else
                        f"train.strategy_args.warmup_epochs={min(epochs - 1, 1 if strategy == 'differentiable' else 2)}")
        if args.data == "cifar10":
            over += cifar_overrides(args.root, args.max_train)
        if args.threads:
            over.append(f"threads={args.threads}")
        over += args.set
        if args.data == "cifar10" and "cost_target" in load_yaml(recipe)["train"].get("strategy_args", {}):
            # the digits recipe's cost target lies outside the CIFAR space's range: use the middle target
            over.append(f"train.strategy_args.cost_target={default_targets(load_run_config(recipe, over))[1]}")
        run = Run.create(load_run_config(recipe, over), progress=False, resume=True)
        targets = args.target or (run.cfg.search.targets if args.data == "digits" else default_targets(run.cfg))
        t0 = time.perf_counter()
        run.train_supernet(resume=run.checkpoint_path.is_file())
        train_s = time.perf_counter() - t0
        budget = 20 if args.quick else args.budget
        result = run.search(targets, budget=budget)
        for target, rec in result.best.items():
            rows.append({"strategy": strategy, "target": target, "arch": rec.text,
                         "macs": float(rec.metrics["macs"]), "accuracy": float(rec.metrics["accuracy"])})
        if run.derived:
            evaluator = run.evaluator()
            arch = run.space.decode(run.derived["arch"])
            rows.append({"strategy": strategy, "target": "derived", "arch": run.derived["arch"],
                         "macs": run.derived["macs"], "accuracy": float(evaluator.evaluate(arch)["accuracy"])})
        summary[strategy] = {"epochs": epochs, "train_seconds": round(train_s, 1), "run": str(run.dir)}

    print("| strategy | target | MACs (M) | accuracy (%) | arch |\n|---|---|---:|---:|---|")
    for r in rows:
        arch = r["arch"] if len(r["arch"]) <= 40 else r["arch"][:37] + "..."
        print(f"| {r['strategy']} | {r['target']} | {r['macs'] / 1e6:.3f} | {r['accuracy'] * 100:.2f} | `{arch}` |")
    print(json.dumps({"benchmark": "strategy_table", "data": args.data, "quick": args.quick, "settings": vars(args),
                      "strategies": summary, "rows": rows}, indent=1))


if __name__ == "__main__":
    Path("runs").mkdir(exist_ok=True)
    main()
