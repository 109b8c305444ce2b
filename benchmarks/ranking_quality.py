"""How well a trained supernet ranks architectures: Kendall tau between the supernet evaluator's
scores (BN-recalibrated paths) and a benchmark table's accuracies, for a random sample of the
table's archs. Prints JSON.

    python benchmarks/ranking_quality.py --run runs/nb201_cifar10 --table nb201_cifar10.csv --n 100
    # demo on CPU (digits supernet vs a synthetic table: unrelated, so tau should be near 0):
    flexnas supernet configs/nb201_digits.yaml
    python benchmarks/ranking_quality.py --run runs/nb201_digits --synthetic runs/nb201_digits/synth.csv --n 30
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flexnas.pipeline import Run  # noqa: E402
from flexnas.search.table import TableEvaluator, synthetic_table  # noqa: E402


def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall's tau-b (ties in either ranking handled), O(n^2): samples are small."""
    dx = np.sign(x[:, None] - x[None, :])
    dy = np.sign(y[:, None] - y[None, :])
    iu = np.triu_indices(len(x), 1)
    dx, dy = dx[iu], dy[iu]
    denom = np.sqrt(float((dx != 0).sum()) * float((dy != 0).sum()))
    return float((dx * dy).sum() / denom) if denom else float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="run folder with a trained supernet (flexnas supernet ...)")
    p.add_argument("--table", help="CSV/JSON table for the run's space (arch, accuracy, ...)")
    p.add_argument("--synthetic", help="write a synthetic table for the run's space here and use it (demo)")
    p.add_argument("--column", default="accuracy", help="table column to rank against")
    p.add_argument("--percent", action="store_true")
    p.add_argument("--n", type=int, default=100, help="archs sampled from the table")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    run = Run.open(args.run, progress=False)
    space = run.space
    table = args.table or (str(synthetic_table(space, args.synthetic)) if args.synthetic else None)
    if not table:
        p.error("give --table FILE (or --synthetic OUT for a demo table)")
    table_ev = TableEvaluator(table, space, accuracy=args.column, scale=0.01 if args.percent else 1.0)
    archs = random.Random(args.seed).sample(table_ev.archs(), min(args.n, len(table_ev)))
    evaluator = run.evaluator()
    t0 = time.perf_counter()
    supernet_scores = np.array([evaluator.evaluate(a)["accuracy"] for a in archs])
    seconds = time.perf_counter() - t0
    table_scores = np.array([table_ev.evaluate(a)["accuracy"] for a in archs])
    top = max(1, len(archs) // 10)
    picked = np.argsort(-supernet_scores, kind="stable")[:top]
    print(json.dumps({
        "run": str(run.dir), "space": space.name, "table": str(table), "synthetic": bool(args.synthetic),
        "column": args.column, "archs": len(archs), "kendall_tau": round(kendall_tau_b(supernet_scores, table_scores), 4),
        "supernet_accuracy_range": [round(float(supernet_scores.min()), 4), round(float(supernet_scores.max()), 4)],
        "table_accuracy_of_supernet_top10pct": round(float(table_scores[picked].mean()), 5),
        "table_accuracy_mean": round(float(table_scores.mean()), 5),
        "evaluations_per_s": round(len(archs) / seconds, 2)}, indent=1))


if __name__ == "__main__":
    main()
