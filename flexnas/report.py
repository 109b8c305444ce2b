"""The run report: `report.md` (chosen arch per target, counts, Pareto front), `pareto.png` plus one
picture per requested metric pair, and `curves.png` (training curves from the run's history.json, or
its TensorBoard epoch scalars for runs older than history.json).

Plots are drawn on matplotlib's Agg canvas directly (no pyplot), so writing a report never switches
the backend of a process that also shows figures, and works on machines without a display.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from flexnas.errors import ConstraintError, DataError
from flexnas.io import atomic_text, atomic_write
from flexnas.search.base import Record, pareto_front
from flexnas.search.constraints import Constraint

if TYPE_CHECKING:
    from flexnas.spaces.base import SearchSpace

__all__ = ["format_table", "load_history", "write_report", "write_training_report"]

# metric -> (axis / column title, factor from raw value to displayed value)
_DISPLAY = {
    "macs": ("MACs (M)", 1e-6),
    "params": ("params (M)", 1e-6),
    "flops": ("FLOPs (M)", 1e-6),
    "accuracy": ("accuracy (%)", 100.0),
    "latency_ms": ("latency (ms)", 1.0),
}


def _title(metric: str) -> str:
    return _DISPLAY.get(metric, (metric, 1.0))[0]


def _shown(rec: Record, metric: str, digits: int = 2) -> str:
    if metric not in rec.metrics:
        return "—"
    return f"{rec.metrics[metric] * _DISPLAY.get(metric, (metric, 1.0))[1]:.{digits}f}"


def _constraint(key: str) -> Optional[Constraint]:
    try:
        return Constraint.parse(key)
    except ConstraintError:
        return None  # e.g. 'unconstrained'


def _check_metrics(records: Sequence[Record], metrics: Sequence[str]) -> None:
    for m in metrics:
        missing = [r for r in records if m not in r.metrics]
        if missing:
            raise DataError(f"cannot plot '{m}': {len(missing)} of {len(records)} evaluated archs lack it "
                            f"(they have {sorted(missing[0].metrics)})")


def format_table(best: Mapping[str, Record]) -> str:
    """Plain-text table of the chosen arch per target for the terminal (arch last: it is long)."""
    header = ["target", "MACs (M)", "params (M)", "accuracy (%)", "arch"]
    rows = [[key, _shown(r, "macs"), _shown(r, "params"), _shown(r, "accuracy"), r.text] for key, r in best.items()]
    if not rows:
        return "no arch met any target"
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]

    def line(row: list[str]) -> str:
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:-1], widths[1:])] + [row[-1]]
        return "  ".join(cells)

    return "\n".join([line(header), *(line(r) for r in rows)])




def _plot(path: Path, records: Sequence[Record], best: Mapping[str, Record], targets: Sequence[Constraint],
          x: str, y: str, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    sx, sy = _DISPLAY.get(x, (x, 1.0))[1], _DISPLAY.get(y, (y, 1.0))[1]
    fig = Figure(figsize=(7.5, 5.0), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.scatter([r[x] * sx for r in records], [r[y] * sy for r in records], s=9, color="0.7",
               label=f"evaluated ({len(records)})", zorder=1)
    front = pareto_front(records, x, y)
    ax.plot([r[x] * sx for r in front], [r[y] * sy for r in front], "-o", color="C0", ms=3, lw=1.5,
            label=f"Pareto front ({len(front)})", zorder=2)
    colors: dict[str, str] = {}
    chosen: dict[object, list[str]] = {}  # one star per arch, labelled with every target it won
    for i, (key, rec) in enumerate(best.items()):
        colors[key] = f"C{(i + 1) % 10}"
        c = _constraint(key)
        chosen.setdefault(rec.arch, []).append(c.label if c is not None else key)
    for key, rec in best.items():
        names = chosen.pop(rec.arch, None)
        if names is None:
            continue
        text = ", ".join(names)
        ax.scatter([rec[x] * sx], [rec[y] * sy], marker="*", s=180, color=colors[key], edgecolors="black",
                   linewidths=0.6, zorder=4, label=f"best for {text}")
        ax.annotate(text, (rec[x] * sx, rec[y] * sy), xytext=(6, 6), textcoords="offset points", fontsize=8,
                    zorder=5)
    for i, c in enumerate(targets):
        if c.metric != x:
            continue
        color = colors.get(str(c), f"C{(i + 1) % 10}")
        for bound in (c.low, c.high):
            if bound is not None:
                ax.axvline(bound * sx, color=color, ls="--", lw=1, zorder=3)
    ax.set_xlabel(_title(x))
    ax.set_ylabel(_title(y))
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png"))


def _plot_name(x: str, y: str, y_default: str) -> str:
    return f"pareto_{x}.png" if y == y_default else f"pareto_{x}_{y}.png"


History = list[dict[str, float]]


def load_history(run_dir: Union[str, Path]) -> History:
    """Per-epoch records of a run's training: history.json (written by the trainer), else the
    `train_epoch/*` TensorBoard scalars of older runs, else []."""
    run_dir = Path(run_dir)
    path = run_dir / "history.json"
    if path.is_file():
        try:
            return [dict(h) for h in json.loads(path.read_text())]
        except (ValueError, TypeError) as exc:
            raise DataError(f"{path} is not a valid history file ({exc}); delete it, the next epoch rewrites it")
    if not (run_dir / "tb").is_dir():
        return []
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    epochs: dict[int, dict[str, float]] = {}
    for tag in acc.Tags().get("scalars", []):
        if tag.startswith("train_epoch/"):
            for ev in acc.Scalars(tag):  # a resumed run may log an epoch twice: the last value wins
                epochs.setdefault(ev.step, {"epoch": float(ev.step)})[tag.split("/", 1)[1]] = ev.value
    return [epochs[e] for e in sorted(epochs)]


def _plot_curves(path: Path, history: History, title: str) -> None:
    """Loss and accuracy per epoch: training (the epoch's running mean) and validation when recorded."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9.0, 3.6), dpi=120)
    FigureCanvasAgg(fig)
    epochs = [h["epoch"] for h in history]
    panels = (("loss", (("loss", "train"), ("val_loss", "validation"))),
              ("accuracy (%)", (("acc", "train"), ("val_top1", "validation top-1"), ("val_top5", "validation top-5"))))
    for i, (ylabel, series) in enumerate(panels):
        ax = fig.add_subplot(1, 2, i + 1)
        scale = 100.0 if "accuracy" in ylabel else 1.0
        for key, label in series:
            points = [(e, h[key] * scale) for e, h in zip(epochs, history) if key in h]
            if points:
                ax.plot(*zip(*points), "-o", ms=3, label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png"))


def _curves_section(run_dir: Path, history: History, title: str) -> list[str]:
    if not history:
        return ["## Training curves", "", "No training history recorded in this run folder.", ""]
    _plot_curves(run_dir / "curves.png", history, f"{title}: training")
    return ["## Training curves", "", "![training curves](curves.png)", ""]


def write_training_report(run_dir: Union[str, Path], metrics: dict[str, Any], history: History,
                          title: str = "flexnas training report") -> Path:
    """report.md + curves.png of a from-scratch training run (`flexnas train`): test metrics and curves."""
    run_dir = Path(run_dir)
    rows = [("arch", f"`{metrics.get('arch', '?')}` ({metrics.get('space', '?')})"),
            ("MACs (M)", f"{metrics['macs'] / 1e6:.2f}" if "macs" in metrics else "—"),
            ("params (M)", f"{metrics['params'] / 1e6:.3f}" if "params" in metrics else "—"),
            ("epochs", str(metrics.get("epochs", len(history)))),
            ("test top-1 (%)", f"{metrics['test_top1'] * 100:.2f}" if "test_top1" in metrics else "—"),
            ("test top-5 (%)", f"{metrics['test_top5'] * 100:.2f}" if "test_top5" in metrics else "—"),
            ("test loss", f"{metrics['test_loss']:.4f}" if "test_loss" in metrics else "—"),
            ("weights evaluated", str(metrics.get("weights", "—")))]
    lines = [f"# {title}", "", "| | |", "|---|---:|", *(f"| {k} | {v} |" for k, v in rows), ""]
    lines += _curves_section(run_dir, history, title)
    report = run_dir / "report.md"
    text = "\n".join(lines) + "\n"
    atomic_text(report, text)
    return report


def write_report(run_dir: Union[str, Path], space: Optional["SearchSpace"], records: Sequence[Record],
                 best: Mapping[str, Record], x_metric: str = "macs", y_metric: str = "accuracy",
                 title: str = "flexnas search report", pairs: Sequence[tuple[str, str]] = (),
                 targets: Sequence[Union[str, Constraint]] = (), history: Optional[History] = None) -> Path:
    """Write `report.md` and `pareto.png` (x_metric vs y_metric) into `run_dir`, plus one
    `pareto_<x>.png` (or `pareto_<x>_<y>.png` when y is not `y_metric`) per extra (x, y) in `pairs`.
    `targets` adds bound lines for targets no arch met (those in `best` are drawn anyway).
    `history` (per-epoch training records, see `load_history`) adds `curves.png`.
    Returns the path of `report.md`."""
    run_dir = Path(run_dir)
    records = list(records)
    if not records:
        raise DataError(f"nothing to report in {run_dir}: no evaluated archs (run a search first)")
    plots = [(x_metric, y_metric, "pareto.png")]
    plots += [(x, y, _plot_name(x, y, y_metric)) for x, y in pairs if (x, y) != (x_metric, y_metric)]
    _check_metrics(records, sorted({m for x, y, _ in plots for m in (x, y)}))
    run_dir.mkdir(parents=True, exist_ok=True)

    constraints: list[Constraint] = []
    for key in [*best, *(str(t) for t in targets)]:
        c = _constraint(key)
        if c is not None and c not in constraints:
            constraints.append(c)
    for x, y, name in plots:
        _plot(run_dir / name, records, best, constraints, x, y, f"{title}: {_title(y)} vs {_title(x)}")

    lines = [f"# {title}", ""]
    if space is not None:
        lines += [f"Space: {space.describe()}", ""]
    front = pareto_front(records, x_metric, y_metric)
    lines += [f"Evaluated architectures: {len(records)}; on the {x_metric}/{y_metric} Pareto front: {len(front)}.",
              ""]
    lines += ["## Chosen architecture per target", ""]
    if best:
        lines += ["| target | arch | MACs (M) | params (M) | accuracy (%) | evaluated archs meeting it |",
                  "|---|---|---:|---:|---:|---:|"]
        for key, rec in best.items():
            c = _constraint(key)
            meeting = sum(1 for r in records if c is None or c.satisfied(r.metrics))
            lines.append(f"| `{key}` | `{rec.text}` | {_shown(rec, 'macs')} | {_shown(rec, 'params')} | "
                         f"{_shown(rec, 'accuracy')} | {meeting} |")
    else:
        lines.append("No evaluated arch met any target.")
    missing = [str(c) for c in constraints if str(c) not in best]
    if missing:
        lines += ["", f"No evaluated arch met: {', '.join(f'`{m}`' for m in missing)}."]
    lines += ["", "## Pareto front", "", f"![{_title(y_metric)} vs {_title(x_metric)}](pareto.png)", ""]
    for x, y, name in plots[1:]:
        lines += [f"![{_title(y)} vs {_title(x)}]({name})", ""]
    lines += [f"| {_title(x_metric)} | {_title(y_metric)} | arch |", "|---:|---:|---|"]
    lines += [f"| {_shown(r, x_metric)} | {_shown(r, y_metric)} | `{r.text}` |" for r in front]
    if history is not None:
        lines += [""] + _curves_section(run_dir, history, title)
    report = run_dir / "report.md"
    text = "\n".join(lines) + "\n"
    atomic_text(report, text)
    return report
