"""The `flexnas` command line. User errors print one line and exit 2, never a traceback."""
from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Callable, Sequence
from typing import Any, Optional

from flexnas.errors import ConfigError, FlexnasError

Handler = Callable[[argparse.Namespace], int]


def _space_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("space", help="search space name (see `flexnas spaces`)")
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--width-mult", type=float, default=1.0)


def _get_space(args: argparse.Namespace) -> Any:
    from flexnas import spaces

    return spaces.get(args.space, input_size=args.input_size, num_classes=args.num_classes,
                      width_mult=args.width_mult)


def cmd_spaces(args: argparse.Namespace) -> int:
    from flexnas import spaces

    for name in spaces.names():
        space = spaces.get(name, input_size=args.input_size, num_classes=args.num_classes)
        lo, hi = space.cost_range("macs")
        print(f"{space.describe()}; MACs {lo / 1e6:.1f}M..{hi / 1e6:.1f}M")
    return 0


def cmd_cost(args: argparse.Namespace) -> int:
    space = _get_space(args)
    arch = space.decode(args.arch)
    cost = space.cost_model(latency=args.latency_table, allow_foreign_table=args.allow_foreign_table).cost(arch)
    out = {"space": space.name, "arch": space.encode(arch), "input_size": space.input_size,
           "num_classes": space.num_classes, "width_mult": space.width_mult,
           "macs": int(cost["macs"]), "params": int(cost["params"])}
    if "latency_ms" in cost:
        out["latency_ms"] = round(cost["latency_ms"], 4)
    if args.json:
        print(json.dumps(out))
    else:
        latency = f"  latency {out['latency_ms']:.3f} ms" if "latency_ms" in out else ""
        print(f"{out['arch']}\nMACs {out['macs'] / 1e6:.2f}M  params {out['params'] / 1e6:.3f}M{latency} "
              f"({space.name}, input {space.input_size}, {space.num_classes} classes)")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    space = _get_space(args)
    rng = random.Random(args.seed)
    for _ in range(args.n):
        print(space.encode(space.sample(rng)))
    return 0


def cmd_zoo(args: argparse.Namespace) -> int:
    from flexnas import zoo

    rows = zoo.table()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="flexnas model zoo (224x224, 1000 classes; MACs = conv + linear multiply-adds)")
    for col in ("model", "space", "MACs", "published", "diff", "params", "published", "diff", "convention"):
        table.add_column(col, justify="right" if col not in ("model", "space", "convention") else "left")
    for r in rows:
        pp = r["published_params"]
        table.add_row(r["name"], r["space"], f"{r['macs'] / 1e6:.1f}M", f"{r['published_macs'] / 1e6:.1f}M",
                      f"{r['macs_diff'] * 100:+.2f}%", f"{r['params'] / 1e6:.3f}M",
                      f"{pp / 1e6:.2f}M" if pp else "-",
                      f"{r['params_diff'] * 100:+.2f}%" if r["params_diff"] is not None else "-",
                      r["params_convention"])
    Console(width=140).print(table)
    return 0


def cmd_strategies(args: argparse.Namespace) -> int:
    from flexnas.train.strategies import describe

    rows = describe()
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    for r in rows:
        arguments = ", ".join(f"{k}={v!r}" for k, v in r["arguments"].items()) or "none"
        print(f"{r['name']}: {r['summary']}\n  arguments: {arguments}\n  spaces: {r['spaces']}")
    return 0


def _print_derived(run: Any) -> None:
    """The arch a differentiable / DSNAS strategy picked by itself (runs/<name>/derived.json)."""
    d = getattr(run, "derived", None)
    if d:
        print(f"derived arch ({d['strategy']}): {d['arch']}  MACs {d['macs'] / 1e6:.3f}M  "
              f"params {d['params'] / 1e6:.3f}M  ({run.dir / 'derived.json'})")


def _run_from_config(args: argparse.Namespace, resume: bool) -> Any:
    from flexnas.pipeline import Run, load_run_config

    cfg = load_run_config(args.config, args.overrides)
    return Run.create(cfg, progress=not args.quiet, resume=resume)


def _rank() -> int:
    from flexnas.train.distributed import rank_and_world

    return rank_and_world()[0]


def cmd_supernet(args: argparse.Namespace) -> int:
    run = _run_from_config(args, args.resume)
    if run.checkpoint_path.is_file() and not args.resume:
        from flexnas.errors import CheckpointError

        raise CheckpointError(f"{run.dir} already has a checkpoint: pass --resume to continue it, "
                              f"or choose another name=...")
    final = run.train_supernet(resume=args.resume)
    if _rank() != 0:
        return 0   # under torchrun, rank 0 reports for all
    print(f"supernet trained: {run.checkpoint_path} ({json.dumps({k: round(v, 4) for k, v in final.items()})})")
    _print_derived(run)
    return 0


def _print_chosen(run: Any, result: Any) -> None:
    from flexnas.report import format_table

    print(format_table(result.best))
    print(f"report: {run.dir / 'report.md'}  picture: {run.dir / 'pareto.png'}")


def _open_run(args: argparse.Namespace, progress: bool) -> Any:
    """The run folder `args.run`; a `--latency-table` is checked and remembered in the run's config, so
    later commands (report, export, generate) see latency_ms too."""
    from flexnas.pipeline import Run

    run = Run.open(args.run, _latency_overrides(args), progress=progress)
    if args.latency_table:
        _ = run.space  # fails here, before saving, on a bad or foreign table
        run.save_config()
    return run


def cmd_search(args: argparse.Namespace) -> int:
    run = _open_run(args, progress=not args.quiet)
    result = run.search(args.target, strategy=args.strategy, budget=args.budget, seed=args.seed)
    run.report(result)
    _print_chosen(run, result)
    return 0


def cmd_nag(args: argparse.Namespace) -> int:
    from flexnas.search import nag

    out = nag.generate_for_run(args.run, args.acc_class, args.params_class, k=args.k,
                               model=args.model or nag.DEFAULT_MODEL, metric=args.metric, classes=args.classes,
                               seed=args.seed, evaluate=not args.no_accuracy)
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    row, metric = out["pairs"][0], out["metric"]
    a, c = row["acc_class"], row["cost_class"]
    how = "fitted" if out["fitted_now"] else "reused (archive unchanged)"
    print(f"NAG ({out['model']}) {how} on {out['train_size']} archs of {out['run']}; requested accuracy class "
          f"{a} ({row['acc_range']}), {metric} class {c} ({row['cost_range']}); {row['train_count']} archs "
          f"of that pair in the archive")
    for x in row["archs"]:
        acc = "" if x["accuracy"] is None else f"  acc {x['accuracy'] * 100:.2f}%"
        print(f"{x['arch']}  {metric} {x[metric] / 1e6:.3f}M{acc}")

    def pct(v: Optional[float]) -> str:
        return "-" if v is None else f"{v * 100:.0f}%"

    print(f"in class ({row['model']['n']} generated, {row['random']['n']} random):  {metric} / accuracy / both")
    for side in ("model", "random"):
        r = row[side]
        print(f"  {'nag' if side == 'model' else 'random':<7} {pct(r['cost_hit']):>5} {pct(r['acc_hit']):>5} "
              f"{pct(r['both_hit']):>5}")
    return 0


def cmd_generate_fit(args: argparse.Namespace) -> int:
    from flexnas.search.generator import spread_targets, targeting_stats

    run = _open_run(args, progress=not args.quiet)
    gen = run.fit_generator(steps=args.steps, metrics=args.metric or None, ce_weight=args.ce_weight,
                            prior_pool=args.prior_pool, seed=args.seed)
    final = gen.info["final"]
    print(f"generator fitted in {gen.info['fit_seconds']:.1f}s ({len(gen.metrics)} metric(s): "
          f"{', '.join(gen.metrics)}; final cost loss {final['cost']:.5f}): {run.generator_path}")
    cfg = run.cfg.generator
    for m in gen.metrics if len(gen.metrics) == 1 else ():
        st = targeting_stats(gen.generate_with_costs(spread_targets(run.space, 20, m), decode=cfg.decode,
                                                     band=cfg.decode_band), m)
        print(f"{m} targeting on 20 targets spread over the range: mean |error| {st['mean_abs_rel_error'] * 100:.2f}%, "
              f"{st['within_band'] * 100:.0f}% within +-5%, {st['over_band']} above +5%")
    return 0


def _generator_targets(args: argparse.Namespace) -> list[str]:
    targets = [t.strip() for item in args.targets for t in item.split(",") if t.strip()] + list(args.target)
    if not targets:
        from flexnas.errors import ConstraintError

        raise ConstraintError("no targets: pass --targets 250M,300M (one metric) or --target "
                              "'macs<=1M,params<=0.3M' (repeatable)")
    return targets


def cmd_generate(args: argparse.Namespace) -> int:
    from flexnas.pipeline import Run

    run = Run.open(args.run, progress=False)
    targets = _generator_targets(args)
    rows = run.generate(targets, evaluate=args.evaluate,
                        priors=[args.prior] * len(targets) if args.prior is not None else None,
                        decode=args.decode)
    if args.json:
        print(json.dumps([{k: v for k, v in r.items() if k != "arch"} | {"target": t}
                          for t, r in zip(targets, rows)], indent=1))
        return 0
    metrics = [k[len("target_"):] for k in rows[0] if k.startswith("target_")] if rows else []
    head = f"{'target':<16}" + "".join(f"{m + ' (M)':>12}{'error':>8}" for m in metrics)
    head += f"{'params (M)':>12}" * ("params" not in metrics) + f"{'accuracy':>10}" * args.evaluate
    print(head + "  arch")
    for t, r in zip(targets, rows):
        line = f"{t:<16}" + "".join(f"{r[m] / 1e6:>12.3f}{r['error_' + m] * 100:>+7.1f}%" for m in metrics)
        line += f"{r['params'] / 1e6:>12.3f}" * ("params" not in metrics)
        if args.evaluate:
            line += f"{r['accuracy'] * 100:>9.2f}%"
        print(f"{line}  {r['text']}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from flexnas.pipeline import Run

    folder = Path(args.run)
    if (folder / "metrics.json").is_file() and not (folder / "archive.sqlite").is_file():
        from flexnas.report import load_history, write_training_report

        # A `flexnas train` run: test metrics and training curves, no search to plot.
        metrics = json.loads((folder / "metrics.json").read_text())
        print(f"report: {write_training_report(folder, metrics, load_history(folder), f'flexnas train {folder.name!r}')}")
        return 0
    run = Run.open(args.run, progress=False)
    pairs = [(x, args.y) for x in (args.x or ["macs"])]
    print(f"report: {run.report(pairs=pairs)}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from flexnas.scratch import ScratchRun, config_from_search_run, load_scratch_config

    overrides = list(args.overrides)
    if args.space:
        overrides.insert(0, f"space.name={args.space}")
    if args.arch:
        overrides.insert(0, f"arch={args.arch}")
    if Path(args.source).is_dir():
        if not args.target:
            raise ConfigError(f"{args.source} is a run folder: pass --target 'macs<=...' to train the arch "
                              f"its search chose for that target (see its chosen.json)")
        cfg = config_from_search_run(args.source, args.target, args.config, overrides)
    else:
        if args.target:
            raise ConfigError("--target picks an arch from a search run folder: pass the folder (runs/<name>), "
                              "not a config file")
        cfg = load_scratch_config(args.source, overrides)
    run = ScratchRun.create(cfg, progress=not args.quiet, resume=args.resume)
    m = run.train(resume=args.resume)
    print(f"{m['arch']}\nMACs {m['macs'] / 1e6:.2f}M  params {m['params'] / 1e6:.3f}M  test top-1 "
          f"{m['test_top1'] * 100:.2f}%  top-5 {m['test_top5'] * 100:.2f}%  loss {m['test_loss']:.4f}  "
          f"({m['weights']} weights)\nrun: {run.dir}  metrics: {run.dir / 'metrics.json'}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from flexnas.scratch import evaluate_checkpoint

    out = evaluate_checkpoint(args.checkpoint, args.data, args.overrides, split=args.split, device=args.device,
                              max_batches=args.max_batches)
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{out['arch']} on {out['data']} {out['split']} ({out['images']} images): top-1 {out['top1'] * 100:.2f}%  "
              f"top-5 {out['top5'] * 100:.2f}%  loss {out['loss']:.4f}  {out['images_per_sec']:,.0f} images/s "
              f"({out['device']})")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    run = _run_from_config(args, resume=True)
    # A run folder continues where it stopped: training resumes from its checkpoint, search reuses
    # every archived evaluation.
    run.train_supernet(resume=run.checkpoint_path.is_file())
    if _rank() != 0:
        return 0   # under torchrun all ranks train; rank 0 alone searches and reports
    _print_derived(run)
    result = run.search()
    run.report(result)
    _print_chosen(run, result)
    return 0


def cmd_table_search(args: argparse.Namespace) -> int:
    from flexnas.search.table import table_search

    space = _get_space(args)
    result = table_search(space, args.table, strategy=args.strategy, budget=args.budget, seed=args.seed,
                          targets=args.target, accuracy=args.accuracy, scale=0.01 if args.percent else 1.0)
    rows = []
    for target, rec in result.best.items():
        row = {"target": target, "arch": rec.text, "accuracy": rec.accuracy,
               **{k: v for k, v in rec.metrics.items() if k != "accuracy"}}
        if hasattr(space, "index"):
            row["index"] = space.index(rec.arch)
        rows.append(row)
    if args.json:
        print(json.dumps({"strategy": args.strategy, "budget": args.budget, "evaluations": result.evaluations,
                          "best": rows}))
        return 0
    for row in rows:
        extra = "  ".join(f"{k} {v}" if isinstance(v, int) else f"{k} {v:.4g}" for k, v in row.items()
                          if k not in ("target", "arch", "accuracy"))
        print(f"{row['target']}: accuracy {row['accuracy']:.4f}  {extra}\n  {row['arch']}")
    return 0


def cmd_synth_table(args: argparse.Namespace) -> int:
    from flexnas.search.table import synthetic_table

    space = _get_space(args)
    path = synthetic_table(space, args.out, n=args.n, seed=args.seed, noise=args.noise)
    print(f"synthetic {space.name} table: {path}")
    return 0


def _latency_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--latency-table", default=None,
                   help="latency table from `flexnas profile`: adds latency_ms (targets like 'latency_ms<=5')")
    p.add_argument("--allow-foreign-table", action="store_true",
                   help="use a latency table measured on another device fingerprint")


def _latency_overrides(args: argparse.Namespace) -> list[str]:
    if not args.latency_table:
        return []
    return [f"cost.latency_table={args.latency_table}", f"cost.allow_foreign_table={str(args.allow_foreign_table).lower()}"]


def cmd_profile(args: argparse.Namespace) -> int:
    from flexnas.cost.latency import attach_latency, default_path, describe_fingerprint, profile

    space = _get_space(args)
    done = [0]

    def progress(i: int, n: int) -> None:
        if not args.quiet and (i == n or i % 5 == 0):
            print(f"  profiled {i}/{n} layers", file=sys.stderr, flush=True)
        done[0] = i

    table = profile(space, args.device, args.batch_size, args.threads, args.dtype, args.warmup, args.repeats,
                    clock=args.clock, flush_mb=args.flush_mb, calibrate=args.calibrate, statistic=args.statistic,
                    progress=progress)
    path = table.save(args.out or default_path(space, table))
    lo, hi = attach_latency(space, table).range("latency_ms")
    cal = table.calibration
    calibrated = (f"calibrated on {cal['archs']} whole archs: x{cal['scale']:.3f} (median error on them "
                  f"{cal['in_sample_median_abs_error_pct']['raw']}% raw -> "
                  f"{cal['in_sample_median_abs_error_pct']['calibrated']}%)" if cal else "not calibrated")
    print(f"{space.describe()}\n{table.settings['modules_timed']} modules timed in {table.settings['seconds']} s on "
          f"{describe_fingerprint(table.fingerprint)}\n{calibrated}\nlatency {lo:.3f}..{hi:.3f} ms "
          f"(stem {table.stem_ms:.3f}, head {table.head_ms:.3f}, raw)\ntable: {path}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from flexnas.export import export_subnet
    from flexnas.pipeline import Run

    run = Run.open(args.run, _latency_overrides(args), progress=False)
    res = export_subnet(run, args.arch, target=args.target, format=args.format, out=args.out, opset=args.opset)
    c = res.card
    latency = f"  latency {c['latency_ms']:.3f} ms" if c.get("latency_ms") is not None else ""
    print(f"{c['arch']}\nMACs {c['macs'] / 1e6:.3f}M  params {c['params'] / 1e6:.3f}M{latency}  "
          f"accuracy {c['accuracy']['top1'] * 100:.2f}% ({c['accuracy']['split']})\n"
          f"{c['format']} check: {c['check']['runtime']} max abs diff {c['check']['max_abs_diff']:.2e} "
          f"(<= {c['check']['tolerance']:g})\nmodel: {res.model_path}  card: {res.card_path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flexnas", description="One-shot neural architecture search.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("spaces", help="list the registered search spaces")
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--num-classes", type=int, default=1000)
    p.set_defaults(func=cmd_spaces)

    p = sub.add_parser("cost", help="exact MACs and params of an architecture string")
    _space_args(p)
    p.add_argument("arch", help="architecture string, e.g. k3e6-skip-...")
    p.add_argument("--json", action="store_true")
    _latency_args(p)
    p.set_defaults(func=cmd_cost)
    # `arch` must follow `space` positionally: reorder so `flexnas cost SPACE ARCH --input-size N` works.

    p = sub.add_parser("sample", help="print random architecture strings of a space")
    _space_args(p)
    p.add_argument("-n", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("zoo", help="published architectures: our counts vs the published numbers")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_zoo)

    p = sub.add_parser("strategies", help="supernet training strategies, their arguments and spaces")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_strategies)

    def config_command(name: str, help_text: str, func: Handler) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("config", help="YAML config (see configs/)")
        p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.epochs=5")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        p.set_defaults(func=func)
        return p

    p = config_command("supernet", "train a supernet into runs/<name>/", cmd_supernet)
    p.add_argument("--resume", action="store_true", help="continue from runs/<name>/checkpoint.pt")
    config_command("run", "supernet -> search -> report, continuing a run folder where it stopped", cmd_run)

    p = sub.add_parser("search", help="search a trained run folder for architectures meeting targets")
    p.add_argument("run", help="run folder, e.g. runs/quickstart")
    p.add_argument("--target", action="append", default=[],
                   help="constraint such as 'macs<=300M', 'params<=4M', '200M<=macs<=300M' (repeatable)")
    p.add_argument("--strategy", choices=["random", "evolution", "nag", "rea"], default=None)
    p.add_argument("--budget", type=int, default=None, help="distinct archs to evaluate")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--quiet", action="store_true")
    _latency_args(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("nag", help="NAG: generate archs for an (accuracy class, params class) from a run's archive")
    p.add_argument("run", help="run folder with a search archive, e.g. runs/quickstart")
    p.add_argument("--acc-class", type=int, required=True, help="0 = lowest accuracy third, 2 = highest")
    p.add_argument("--params-class", "--cost-class", dest="params_class", type=int, required=True,
                   help="class of --metric (params by default), 0 = cheapest")
    p.add_argument("-k", type=int, default=10, help="archs to generate (and random archs to compare)")
    p.add_argument("--model", default=None, help="gan (default, NAG's conditional GAN) or categorical (fits in ms)")
    p.add_argument("--metric", default="params", help="what the cost class bins: params or macs")
    p.add_argument("--classes", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-accuracy", action="store_true", help="cost classes only: evaluate nothing")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_nag)

    p = sub.add_parser("generate-fit", help="fit the SGNAS-style architecture generator of a trained run folder")
    p.add_argument("run", help="trained run folder, e.g. runs/quickstart")
    p.add_argument("--steps", type=int, default=None, help="fitting steps (default: generator.steps)")
    p.add_argument("--metric", action="append", default=[],
                   help="cost metric to condition on (repeatable; default: generator.metrics)")
    p.add_argument("--ce-weight", type=float, default=None, help="0 fits the cost term only")
    p.add_argument("--prior-pool", type=int, default=None, metavar="P",
                   help="condition on a prior arch from a pool of P cost levels (SGNAS); 0: none")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--quiet", action="store_true")
    _latency_args(p)
    p.set_defaults(func=cmd_generate_fit)

    p = sub.add_parser("generate", help="one arch per target from a run's fitted generator, in one forward pass")
    p.add_argument("run", help="run folder holding generator.pt (see generate-fit)")
    p.add_argument("--targets", action="append", default=[], help="comma-separated targets: 250M,300M or macs<=300M")
    p.add_argument("--target", action="append", default=[],
                   help="one full target, e.g. 'macs<=1M,params<=0.3M' for a two-metric generator (repeatable)")
    p.add_argument("--evaluate", action="store_true", help="also score each arch (BN-recalibrated accuracy)")
    p.add_argument("--prior", default=None, metavar="ARCH",
                   help="prior arch for every target (a generator fitted with --prior-pool; default: its pool's)")
    p.add_argument("--decode", default=None, metavar="{argmax,budget}",
                   help="argmax per choice point, or budget: the most likely arch costing within "
                        "[target * (1 - generator.decode_band), target] (default: generator.decode)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("train", help="train one architecture from scratch into runs/<name>/")
    p.add_argument("source", help="a training recipe (configs/train_*.yaml), or a search run folder with --target")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.epochs=5")
    p.add_argument("--space", help="search space of --arch (sets space.name)")
    p.add_argument("--arch", help="architecture string (sets arch)")
    p.add_argument("--target", help="with a run folder: train the arch its search chose for this target")
    p.add_argument("--config", help="with a run folder: the training recipe to use (default: built-in defaults)")
    p.add_argument("--resume", action="store_true", help="continue from runs/<name>/checkpoint.pt")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="top-1/top-5, loss and images/s of a trained model")
    p.add_argument("checkpoint", help="a `flexnas train` run folder, its model.pt or its checkpoint.pt")
    p.add_argument("overrides", nargs="*", help="data key=value overrides, e.g. root=../data max_test=500")
    p.add_argument("--data", help="dataset name or data YAML (default: the data the model was trained on)")
    p.add_argument("--split", default="test", help="test (default), val or train")
    p.add_argument("--device", default="auto")
    p.add_argument("--max-batches", type=int, default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("profile", help="measure a latency lookup table of a space on this device")
    _space_args(p)
    p.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--dtype", default="float32", help="float32; float16 / bfloat16 on cuda")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                   help="cpu: one thread's CPU time, for shared, oversubscribed CPUs")
    p.add_argument("--flush-mb", type=float, default=0.0, help="evict caches with a buffer this large before each call")
    p.add_argument("--statistic", default="median", choices=["median", "min"],
                   help="per-module summary of the repeats; min is steadier on a shared or busy CPU")
    p.add_argument("--calibrate", type=int, default=10, metavar="ARCHS",
                   help="fit the table's scale on this many random whole archs timed end to end (0: off)")
    p.add_argument("--out", default=None, help="JSON path (default latency/<space>-<size>px-x<width>-<device>-<id>.json)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("export", help="write a searched arch as a standalone model with a JSON model card")
    p.add_argument("run", help="trained run folder, e.g. runs/quickstart")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--arch", default=None, help="architecture string of the run's space")
    which.add_argument("--target", default=None, help="export the arch the run chose for this target (chosen.json)")
    p.add_argument("--format", default="pt", choices=["pt", "torchscript", "onnx"])
    p.add_argument("--out", default=None, help="output folder (default runs/<name>/export/<space>-<target or hash>)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset")
    _latency_args(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("report", help="(re)write report.md, pareto.png and curves.png of a run folder")
    p.add_argument("run")
    p.add_argument("--x", action="append", default=None,
                   help="x metric of an extra Pareto picture: macs, params, latency_ms (repeatable)")
    p.add_argument("--y", default="accuracy", help="y metric of the extra pictures (default: accuracy)")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("table-search", help="search a space against a benchmark table (CSV/JSON), no training")
    _space_args(p)
    p.add_argument("--table", required=True, help="CSV or JSON table: arch, accuracy, ... (docs/tables.md)")
    p.add_argument("--strategy", choices=["random", "evolution", "rea"], default="rea")
    p.add_argument("--budget", type=int, default=100, help="distinct archs to query")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target", action="append", default=[], help="constraint such as 'params<=1M' (repeatable)")
    p.add_argument("--accuracy", default="accuracy", help="table column searched on (default: accuracy)")
    p.add_argument("--percent", action="store_true", help="accuracy columns are in percent")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_table_search)

    p = sub.add_parser("synth-table", help="write a synthetic benchmark table for demos and tests")
    _space_args(p)
    p.add_argument("--out", required=True, help="output .csv or .json")
    p.add_argument("-n", type=int, default=None, help="archs (default: all for nb201, else 5000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise", type=float, default=0.004)
    p.set_defaults(func=cmd_synth_table)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `key=value` overrides may follow option flags (argparse stops collecting positionals there).
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = list(args.overrides) + extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.func(args) or 0)
    except FlexnasError as exc:
        print(f"flexnas: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("flexnas: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
