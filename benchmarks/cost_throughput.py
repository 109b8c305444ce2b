"""Vectorised cost-model throughput: archs per second of `CostModel.costs`, per space.

Prints JSON. Two input forms: an int array of choices (what searchers and generators hold) and a
list of `Arch` objects (includes the Python conversion)."""
from __future__ import annotations

import argparse
import json
import random
import time

import numpy as np

from flexnas import spaces


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--input-size", type=int, default=224)
    args = parser.parse_args()
    results = {}
    for name in spaces.names():
        space = spaces.get(name, input_size=args.input_size)
        t0 = time.perf_counter()
        cm = space.cost_model()
        build_s = time.perf_counter() - t0
        rng = random.Random(0)
        archs = [space.sample(rng) for _ in range(args.n)]
        array = np.array([a.choices for a in archs], dtype=np.int64)
        t0 = time.perf_counter()
        cm.costs(array)
        array_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        cm.costs(archs)
        list_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for a in archs[:2000]:
            cm.cost(a)
        single_s = (time.perf_counter() - t0) / 2000
        results[name] = {
            "choice_points": len(space.choices),
            "table_build_s": round(build_s, 3),
            "archs_per_s_array": round(args.n / array_s),
            "archs_per_s_arch_list": round(args.n / list_s),
            "archs_per_s_single_calls": round(1 / single_s),
            "vectorised_speedup_vs_single": round(single_s * args.n / array_s, 1),
        }
    print(json.dumps({"benchmark": "cost_throughput", "n": args.n, "input_size": args.input_size,
                      "results": results}, indent=2))


if __name__ == "__main__":
    main()
