"""Do the supernet's scores agree with each other? For random archs inside one MACs band of a trained
run, Spearman correlations between: the search score (BN-recalibrated accuracy on the
search-validation split), the same path's accuracy on held-out test images, and the training-batch
cross-entropy the SGNAS generator minimises (supernet running BN statistics, or each batch's own).
Prints JSON: per-arch rows, means and spreads, and the correlations.

    python benchmarks/score_agreement.py runs/cifar10_search_vs_random --archs 40 --band 11M,15M --threads 1

What it is for: within a band of equal cost, true quality differences between archs are small, so the
correlation between two independent scorings shows how much of a search's "best" arch is signal and
how much the noise of a finite validation split; the CE rows show what signal the generator gets.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics

import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from flexnas.pipeline import Run
from flexnas.search.constraints import _number
from flexnas.search.generator import _Frozen
from flexnas.train.trainer import prepare_input


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a trained run folder with a test split")
    parser.add_argument("--archs", type=int, default=40)
    parser.add_argument("--band", default=None, help="LOW,HIGH MACs (default: 35%%..50%% of the range)")
    parser.add_argument("--ce-batches", type=int, default=8, help="training batches for the CE columns")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    run = Run.open(args.run, progress=False)
    space, supernet = run.space, run.trained_supernet()
    cost_model = space.cost_model()
    lo, hi = space.cost_range("macs")
    band = ([_number(v) for v in args.band.split(",")] if args.band else
            [lo + 0.35 * (hi - lo), lo + 0.5 * (hi - lo)])
    rng = random.Random(args.seed)
    archs = []
    for _ in range(1_000_000):
        arch = space.sample(rng)
        if band[0] <= cost_model.cost(arch)["macs"] <= band[1]:
            archs.append(arch)
            if len(archs) == args.archs:
                break
    search_eval, test_eval = run.evaluator(supernet), run.evaluator(supernet, split="test")
    batches = []
    for x, y, *_ in run.data.train.epoch(0):
        batches.append((prepare_input(x, run.device), y.to(run.device)))
        if len(batches) == args.ce_batches:
            break

    def train_ce(arch, batch_stats: bool) -> float:
        frozen = _Frozen(supernet, batch_stats=batch_stats)  # buffers restored after
        try:
            with torch.no_grad():
                losses = [F.cross_entropy(supernet(x, arch), y, reduction="sum").item() for x, y in batches]
        finally:
            frozen.restore()
        return sum(losses) / sum(len(y) for _, y in batches)

    rows = []
    for arch in archs:
        rows.append({"arch": space.encode(arch), "macs": cost_model.cost(arch)["macs"],
                     "search_val": search_eval.evaluate(arch)["accuracy"],
                     "test": test_eval.evaluate(arch)["accuracy"],
                     "train_ce_running_bn": train_ce(arch, False), "train_ce_batch_bn": train_ce(arch, True)})
    keys = ["search_val", "test", "train_ce_running_bn", "train_ce_batch_bn", "macs"]
    pairs = [("search_val", "test"), ("train_ce_running_bn", "test"), ("train_ce_batch_bn", "test"),
             ("train_ce_running_bn", "search_val"), ("macs", "test")]
    print(json.dumps({
        "run": args.run, "band_macs": band, "archs": len(rows), "search_val_images": search_eval.num_val,
        "test_images": test_eval.num_val, "ce_images": sum(len(y) for _, y in batches),
        "mean": {k: statistics.fmean(r[k] for r in rows) for k in keys},
        "stdev": {k: statistics.stdev(r[k] for r in rows) for k in keys},
        "spearman": {f"{a}~{b}": float(spearmanr([r[a] for r in rows], [r[b] for r in rows]).correlation)
                     for a, b in pairs},
        "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
