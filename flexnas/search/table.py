"""`TableEvaluator`: scores archs from a benchmark table (CSV or JSON) instead of a supernet, so every
searcher and generator runs against NAS-Bench-201-style tables without training.

Table columns (docs/tables.md):
- `arch`: the space's arch string (for nb201 the benchmark's own `|op~0|+...` string); for nb201 an
  `index` column (benchmark index) may stand in for it.
- `accuracy`: the search signal, a fraction in [0, 1] (for a percent table pass `scale=0.01`); pick
  another column with `accuracy=` (e.g. `valid_accuracy`).
- any other numeric column (`test_accuracy`, `flops`, `latency_ms`, ...) is returned as a metric too.

JSON tables are either `{"<arch>": {"accuracy": ..., ...}, ...}` or a list of row objects.
`synthetic_table` writes a demo table (no benchmark data is shipped or downloaded).
"""
from __future__ import annotations

import csv
import json
import math
import random
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from flexnas.arch import Arch
from flexnas.errors import ArchError, DataError, did_you_mean

if TYPE_CHECKING:
    from flexnas.spaces.base import SearchSpace

__all__ = ["TableEvaluator", "read_table", "synthetic_table"]


def read_table(path: Union[str, Path]) -> list[dict[str, Any]]:
    """Rows of a CSV (header row) or JSON table as dicts."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"table {path} does not exist")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(path.read_text())
            if isinstance(data, dict) and all(isinstance(v, Mapping) for v in data.values()):
                return [{"arch": k, **v} for k, v in data.items()]
            if isinstance(data, list) and all(isinstance(r, Mapping) for r in data):
                return [dict(r) for r in data]
            raise DataError(f"table {path} must be a JSON list of row objects or an object keyed by arch")
        with path.open(newline="") as f:
            return list(csv.DictReader(f))
    except (json.JSONDecodeError, csv.Error, UnicodeDecodeError) as exc:
        raise DataError(f"table {path} cannot be read: {exc}") from None


class TableEvaluator:
    """`evaluate(arch)` -> the table row's numeric metrics, with `accuracy` the chosen column."""

    def __init__(self, path: Union[str, Path], space: "SearchSpace", accuracy: str = "accuracy",
                 scale: float = 1.0) -> None:
        self.path, self.space, self.accuracy_column = Path(path), space, accuracy
        rows = read_table(self.path)
        if not rows:
            raise DataError(f"table {self.path} has no rows")
        columns = list(rows[0])
        if accuracy not in columns:
            raise DataError(f"table {self.path} has no column '{accuracy}'{did_you_mean(accuracy, columns)}; "
                            f"columns: {', '.join(columns)}")
        key = "arch" if "arch" in columns else "index" if "index" in columns and hasattr(space, "from_index") else None
        if key is None:
            raise DataError(f"table {self.path} needs an 'arch' column (the {space.name} arch string); "
                            f"columns: {', '.join(columns)}")
        self._rows: dict[Arch, dict[str, float]] = {}
        for n, row in enumerate(rows, start=2 if self.path.suffix.lower() != ".json" else 1):
            try:
                arch = space.from_index(int(row[key])) if key == "index" else space.decode(str(row[key]))  # type: ignore[attr-defined]
            except (ArchError, ValueError) as exc:
                raise DataError(f"table {self.path}, row {n}: {exc}") from None
            metrics = {}
            for col, value in row.items():
                if col in ("arch", "index") or value in (None, ""):
                    continue
                try:
                    metrics[col] = float(value)
                except (TypeError, ValueError):
                    continue  # text columns (notes, dataset names) are not metrics
            if accuracy not in metrics:
                raise DataError(f"table {self.path}, row {n}: no numeric '{accuracy}'")
            for col in metrics:
                if "accuracy" in col:
                    metrics[col] *= scale
            if not 0.0 <= metrics[accuracy] <= 1.0:
                raise DataError(f"table {self.path}, row {n}: {accuracy}={metrics[accuracy]:g} is not a fraction "
                                f"in [0, 1]; for a table in percent pass scale=0.01 (CLI: --percent)")
            metrics["accuracy"] = metrics[accuracy]
            self._rows[arch] = metrics

    def __len__(self) -> int:
        return len(self._rows)

    def archs(self) -> list[Arch]:
        return list(self._rows)

    def evaluate(self, arch: Arch) -> dict[str, float]:
        try:
            return dict(self._rows[arch])
        except KeyError:
            raise DataError(f"{self.space.encode(arch)} is not in table {self.path} ({len(self._rows)} archs); "
                            f"search only the archs the table holds, or use a complete table") from None

    __call__ = evaluate


def synthetic_table(space: "SearchSpace", path: Union[str, Path], n: Optional[int] = None, seed: int = 0,
                    noise: float = 0.004) -> Path:
    """Write a demo table: `accuracy` (validation) and `test_accuracy` are a smooth function of the
    arch (a saturating function of its log-parameter count plus a fixed random effect per choice
    point and option) plus independent noise, so it has a known structure searchers can exploit.
    Every arch of a space that can list them (nb201), else `n` (default 5000) sampled archs."""
    rng = random.Random(seed)
    if n is None and hasattr(space, "all_archs"):
        archs = space.all_archs()  # type: ignore[attr-defined]
    else:
        want, seen = n or 5000, set()
        archs = []
        for _ in range(50 * want):
            a = space.sample(rng)
            if a not in seen:
                seen.add(a)
                archs.append(a)
                if len(archs) == want:
                    break
    effects = [[rng.gauss(0.0, 1.0) for _ in p.options] for p in space.choices]
    cm = space.cost_model()
    lo, hi = cm.range("params")
    rows = []
    for a in archs:
        cost = cm.cost(a)
        size = (math.log(cost["params"]) - math.log(lo)) / max(math.log(hi) - math.log(lo), 1e-9)
        z = 3.0 * size - 1.0 + sum(e[c] for e, c in zip(effects, a.choices)) / math.sqrt(len(effects))
        clean = 0.55 + 0.4 / (1.0 + math.exp(-z))
        rows.append({"arch": space.encode(a),
                     "accuracy": round(min(1.0, max(0.0, clean + rng.gauss(0.0, noise))), 5),
                     "test_accuracy": round(min(1.0, max(0.0, clean + rng.gauss(0.0, noise))), 5),
                     "macs": int(cost["macs"]), "params": int(cost["params"])})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".json":
        path.write_text(json.dumps(rows))
    else:
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return path


def table_search(space: "SearchSpace", table: Union[str, Path], strategy: str = "rea", budget: int = 100,
                 seed: int = 0, targets: Optional[list[str]] = None, accuracy: str = "accuracy",
                 scale: float = 1.0, **search_options: Any) -> Any:
    """Run one searcher against a table (in-memory archive): the `flexnas table-search` command."""
    from flexnas.search.runner import SearchConfig, run_search

    evaluator = TableEvaluator(table, space, accuracy=accuracy, scale=scale)
    cfg = SearchConfig(strategy=strategy, budget=budget, seed=seed, targets=list(targets or []), **search_options)
    return run_search(space, evaluator, cfg)
