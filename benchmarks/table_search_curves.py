"""Search strategies on a benchmark table: best-found test accuracy vs number of queries, mean and
spread over seeds, plus a PNG of the curves. Prints JSON.

Protocol (as NAS-Bench-201 / NATS-Bench report it): each strategy searches on the table's `accuracy`
column (validation); after q queries the reported value is the `test_accuracy` of the arch with the
best validation accuracy among the first q.

    python benchmarks/table_search_curves.py --space nb201 --table nb201_cifar10.csv --budget 300 --seeds 10
    python benchmarks/table_search_curves.py --synthetic runs/tables/nb201_synth.csv   # demo table
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flexnas import spaces  # noqa: E402
from flexnas.search import SearchConfig, run_search  # noqa: E402
from flexnas.search.table import TableEvaluator, synthetic_table  # noqa: E402


def best_so_far(records: list, test_column: str) -> list[float]:
    curve, best = [], None
    for r in records:
        if best is None or r.accuracy > best.accuracy:
            best = r
        curve.append(best[test_column] if test_column in best.metrics else best.accuracy)
    return curve


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", default="nb201")
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--width-mult", type=float, default=1.0)
    p.add_argument("--table", help="CSV/JSON table (arch, accuracy, test_accuracy, ...)")
    p.add_argument("--synthetic", help="write a synthetic table here first and use it (demo)")
    p.add_argument("--strategies", default="random,evolution,rea")
    p.add_argument("--budget", type=int, default=300)
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--test-column", default="test_accuracy")
    p.add_argument("--accuracy", default="accuracy", help="column searched on")
    p.add_argument("--percent", action="store_true")
    p.add_argument("--png", default="table_search_curves.png")
    args = p.parse_args()
    space = spaces.get(args.space, input_size=args.input_size, num_classes=args.num_classes,
                       width_mult=args.width_mult)
    table = args.table
    if args.synthetic:
        table = str(synthetic_table(space, args.synthetic))
    if not table:
        p.error("give --table FILE (or --synthetic OUT for a demo table)")
    ev = TableEvaluator(table, space, accuracy=args.accuracy, scale=0.01 if args.percent else 1.0)
    rows = [ev.evaluate(a) for a in ev.archs()]
    oracle = max(rows, key=lambda m: m["accuracy"]).get(args.test_column)

    curves: dict[str, list[list[float]]] = {}
    seconds: dict[str, float] = {}
    for strategy in args.strategies.split(","):
        t0 = time.perf_counter()
        curves[strategy] = []
        for seed in range(args.seeds):
            cfg = SearchConfig(strategy=strategy, budget=args.budget, seed=seed, population=20, parents=5,
                               mutations=10, crossovers=10, tournament=5)
            curves[strategy].append(best_so_far(run_search(space, ev, cfg).records, args.test_column))
        seconds[strategy] = round(time.perf_counter() - t0, 2)

    checkpoints = sorted({q for q in (10, 25, 50, 100, 150, 200, 300, 500, 1000) if q <= args.budget} | {args.budget})
    summary = {}
    for s, runs in curves.items():
        summary[s] = {}
        for q in checkpoints:
            vals = [c[q - 1] for c in runs]
            summary[s][str(q)] = {"mean": round(statistics.mean(vals), 5),
                                  "std": round(statistics.pstdev(vals), 5)}
    out = {"space": space.name, "table": str(table), "rows": len(ev), "synthetic": bool(args.synthetic),
           "budget": args.budget, "seeds": args.seeds, "test_column": args.test_column,
           "best_by_validation_in_table": oracle, "best_test_accuracy": summary, "seconds": seconds}

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    xs = list(range(1, args.budget + 1))
    for s, runs in curves.items():
        mean = [statistics.mean(c[i] for c in runs) for i in range(args.budget)]
        std = [statistics.pstdev([c[i] for c in runs]) for i in range(args.budget)]
        ax.plot(xs, mean, label=s)
        ax.fill_between(xs, [m - d for m, d in zip(mean, std)], [m + d for m, d in zip(mean, std)], alpha=0.2)
    if oracle is not None:
        ax.axhline(oracle, color="k", ls=":", lw=1, label="best in table (by validation)")
    ax.set_xlabel("queries")
    ax.set_ylabel(f"{args.test_column} of best-by-validation arch")
    ax.set_title(f"{space.name}: mean ± std over {args.seeds} seeds" + (" (synthetic table)" if args.synthetic else ""))
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.png, dpi=120)
    out["png"] = args.png
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
