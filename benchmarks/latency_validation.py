"""Latency tables vs reality: predicted (table sum) vs measured end-to-end latency of random archs.

For each space: profile its latency table on this machine, then build `--archs` random standalone
subnets and time each end to end with the same timer, clock, threads and batch size. Prints JSON with
the median absolute error (%) per space (goal <= 10%) and the signed median error (bias: negative
means the table under-predicts), for the calibrated table (its scale fitted on `--calibrate` other
random archs, see `calibrate_table`) and for the raw module sum. Why the table goes wrong is discussed in docs/latency.md.

    python benchmarks/latency_validation.py                       # 30 archs, 5 spaces, 32 px, x0.5, batch 1
    python benchmarks/latency_validation.py --spaces proxyless --archs 3 --repeats 5   # smoke run
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flexnas import spaces  # noqa: E402
from flexnas.cost.latency import measure_latency, profile  # noqa: E402

DEFAULT_SPACES = ("proxyless", "mobilenetv2", "fbnet", "spos", "sgnas")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spaces", nargs="+", default=list(DEFAULT_SPACES))
    ap.add_argument("--archs", type=int, default=30)
    ap.add_argument("--input-size", type=int, default=32)
    ap.add_argument("--width-mult", type=float, default=0.5)
    ap.add_argument("--num-classes", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                    help="cpu: thread CPU time, immune to other processes holding the core (1 thread)")
    ap.add_argument("--statistic", default="min", choices=["median", "min"],
                    help="summary of the repeats, for the table and the whole networks alike")
    ap.add_argument("--flush-mb", type=float, default=0.0, help="cold-cache profiling (see profile())")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--calibrate", type=int, default=10,
                    help="archs the table's scale is fitted on (drawn apart from the validation archs; 0: raw)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = {"settings": vars(args), "spaces": {}}
    for name in args.spaces:
        space = spaces.get(name, input_size=args.input_size, num_classes=args.num_classes,
                           width_mult=args.width_mult)
        t0 = time.perf_counter()
        table = profile(space, "cpu", args.batch_size, args.threads, warmup=args.warmup, repeats=args.repeats,
                        clock=args.clock, flush_mb=args.flush_mb, calibrate=args.calibrate,
                        calibration_seed=args.seed + 1000, statistic=args.statistic)
        profile_s = time.perf_counter() - t0
        cm = space.cost_model(latency=table)
        calib_rng = random.Random(args.seed + 1000)  # the draws calibrate_table made
        calibration_archs = {space.sample(calib_rng) for _ in range(args.calibrate)}
        overlap = 0
        rng = random.Random(args.seed)
        rows = []
        for _ in range(args.archs):
            arch = space.sample(rng)
            predicted = cm.cost(arch)["latency_ms"]
            measured = measure_latency(space.subnet(arch), args.input_size, "cpu", args.batch_size,
                                       warmup=args.warmup, repeats=args.repeats, clock=args.clock,
                                       statistic=args.statistic)
            rows.append((predicted, measured))
            overlap += arch in calibration_archs
        errors = [(p - m) / m * 100 for p, m in rows]
        raw_errors = [(p / table.scale - m) / m * 100 for p, m in rows]
        out["spaces"][name] = {
            "archs": len(rows),
            "median_abs_error_pct": round(statistics.median(abs(e) for e in errors), 2),
            "median_signed_error_pct": round(statistics.median(errors), 2),
            "max_abs_error_pct": round(max(abs(e) for e in errors), 2),
            "uncalibrated_median_abs_error_pct": round(statistics.median(abs(e) for e in raw_errors), 2),
            "uncalibrated_median_signed_error_pct": round(statistics.median(raw_errors), 2),
            "calibration": table.calibration,
            "validation_archs_also_used_for_calibration": overlap,
            "measured_ms_range": [round(min(m for _, m in rows), 3), round(max(m for _, m in rows), 3)],
            "table_latency_range_ms": [round(v, 3) for v in cm.range("latency_ms")],
            "rank_agreement": _kendall([p for p, _ in rows], [m for _, m in rows]),
            "modules_timed": table.settings["modules_timed"],
            "profile_s": round(profile_s, 1),
            "fingerprint": table.fingerprint,
        }
        print(json.dumps({name: {k: v for k, v in out["spaces"][name].items() if k != "fingerprint"}}),
              file=sys.stderr, flush=True)
    print(json.dumps(out, indent=1))


def _kendall(a: list[float], b: list[float]) -> float:
    """Kendall's tau: does the table order archs as the measurements do (what search relies on)?"""
    n, s = len(a), 0
    for i in range(n):
        for j in range(i + 1, n):
            s += (1 if (a[i] - a[j]) * (b[i] - b[j]) > 0 else -1 if (a[i] - a[j]) * (b[i] - b[j]) < 0 else 0)
    return round(2 * s / (n * (n - 1)), 3) if n > 1 else 1.0


if __name__ == "__main__":
    main()
