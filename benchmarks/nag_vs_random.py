"""NAG conditional generators vs random sampling: how often a generated arch lands in the requested
(accuracy class, cost class). Prints JSON.

    python benchmarks/nag_vs_random.py                       # runs/quickstart (trained, with an archive)
    python benchmarks/nag_vs_random.py --run runs/try --k 20 --metric macs
    python benchmarks/nag_vs_random.py --fake --records 300 --k 100   # known accuracy function, no supernet

On a run folder the training set is its archive (`archive.sqlite`) and accuracy comes from the run's
BN-recalibrating supernet evaluator (archs the archive holds are not re-evaluated; nothing is written
back). `--fake` scores `--records` uniformly drawn archs of a tiny proxyless space with a known
function of the arch (accuracy rises with MACs and with the share of 5x5 kernels) instead.
Cost classes are always exact (cost model). Random archs are drawn once and shared by every model.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from flexnas import spaces  # noqa: E402
from flexnas.arch import Arch  # noqa: E402
from flexnas.search import Archive  # noqa: E402
from flexnas.search.nag import MODELS, CachedAccuracy, NagGenerator, in_class_rates  # noqa: E402


class KnownAccuracy:
    """Accuracy as a known function of the arch: saturating in MACs, plus 5x5-kernel share."""

    def __init__(self, space) -> None:
        self.space, self.cost_model = space, space.cost_model()

    def evaluate(self, arch: Arch) -> dict[str, float]:
        macs = self.cost_model.cost(arch)["macs"]
        k5 = sum(self.space.choices[i].options[c].startswith("k5") for i, c in enumerate(arch.choices))
        return {"accuracy": 0.5 + 0.3 * (1 - math.exp(-macs / 1e6)) + 0.1 * k5 / len(arch.choices)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/quickstart")
    ap.add_argument("--fake", action="store_true", help="known accuracy function instead of a run folder")
    ap.add_argument("--records", type=int, default=300, help="--fake: archs in the training archive")
    ap.add_argument("--k", type=int, default=20, help="archs generated per class pair")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--metric", default="params", choices=["params", "macs"])
    ap.add_argument("--classes", type=int, default=3)
    ap.add_argument("--gan-steps", type=int, default=None)
    ap.add_argument("--seeds", type=int, default=1, help="fit/generation seeds 0..N-1")
    ap.add_argument("--no-accuracy", action="store_true", help="cost classes only (no evaluator)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    if args.fake:
        space = spaces.get("proxyless", input_size=8, num_classes=10, width_mult=0.25)
        evaluator = KnownAccuracy(space)
        archive = Archive(None, space)
        rng = random.Random(12345)
        while len(archive) < args.records:
            arch = space.sample(rng)
            archive.add(arch, {**evaluator.evaluate(arch), **space.cost_model().cost(arch)})
        records, source = archive.records(), "fake"
    else:
        from flexnas.pipeline import Run

        run = Run.open(args.run, progress=False)
        space = run.space
        archive = Archive(run.dir / "archive.sqlite", space, scorer=run.scorer_id())  # no stale scores
        records, source = archive.records(), str(run.dir)
        evaluator = None if args.no_accuracy else run.evaluator()
    accuracy = None if args.no_accuracy else CachedAccuracy(evaluator, archive)

    out = {"source": source, "space": repr(space), "metric": args.metric, "k": args.k,
           "train_size": len(records), "results": []}
    for name in args.models.split(","):
        kwargs = {"steps": args.gan_steps} if name == "gan" and args.gan_steps else {}
        for seed in range(args.seeds):
            t0 = time.perf_counter()
            gen = NagGenerator(space, name, args.metric, args.classes, **kwargs).fit(records, seed=seed)
            fit_s = time.perf_counter() - t0
            res = in_class_rates(gen, args.k, evaluator=accuracy, seed=seed, archive=archive)
            out["results"].append({
                "model": name, "seed": seed, "fit_s": round(fit_s, 2), "mean": res["mean"],
                "pairs": [{k: p[k] for k in ("acc_class", "cost_class", "train_count", "model", "random")}
                          for p in res["pairs"]]})
            print(f"# {name} seed {seed}: fit {fit_s:.1f}s, mean {json.dumps(res['mean'])}", file=sys.stderr)
    out["evaluations"] = accuracy.evaluations if accuracy is not None else 0
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
