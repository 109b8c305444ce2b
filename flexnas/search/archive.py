"""The search archive: every evaluated arch in one SQLite file (`runs/<name>/archive.sqlite`).

Written through (one commit per evaluation, WAL journal), so a search killed at any point loses at
most the evaluation in flight, and a restarted search answers every arch it already scored from here
instead of calling the evaluator again. The report reads the same file.
"""
from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

from flexnas.arch import Arch
from flexnas.errors import DataError
from flexnas.search.base import Record

if TYPE_CHECKING:
    from flexnas.spaces.base import SearchSpace

__all__ = ["Archive"]

SCHEMA_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS evaluations (
    id      INTEGER PRIMARY KEY,        -- evaluation order, from 1 (Record.order is id - 1)
    arch    TEXT NOT NULL UNIQUE,       -- space.encode(arch)
    choices TEXT NOT NULL,              -- JSON list of choice indices
    metrics TEXT NOT NULL,              -- JSON object: evaluator metrics and costs
    tag     TEXT NOT NULL DEFAULT '',   -- which search produced it, e.g. 'evolution'
    seed    INTEGER,                    -- that search's seed, if known
    created REAL NOT NULL               -- unix time
);
"""


_SELECT = "SELECT id - 1, arch, choices, metrics, tag, seed FROM evaluations"


def _space_id(space: "SearchSpace") -> str:
    # repr names the space and every argument that changes shapes, hence costs and metrics.
    return repr(space)


class Archive:
    """Evaluated archs of one space, keyed by arch. `path=None` keeps everything in memory."""

    def __init__(self, path: Optional[Union[str, Path]], space: "SearchSpace",
                 scorer: Optional[str] = None) -> None:
        """`scorer` identifies what produced the scores (supernet weights, evaluator settings): an
        archive written under another scorer is refused, since its accuracies would be stale."""
        self.space = space
        self.scorer = scorer
        self.path = None if path is None else Path(path)
        self._by_arch: dict[Arch, Record] = {}
        target = ":memory:"
        if self.path is not None:
            if self.path.is_dir():
                raise DataError(f"archive path {self.path} is a directory; give a file such as "
                                f"{self.path / 'archive.sqlite'}")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            target = str(self.path)
        try:
            self._conn = sqlite3.connect(target)
            if self.path is not None:
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=NORMAL")
            with self._conn:
                self._conn.executescript(_SCHEMA)
            self._check_meta()
            rows = self._conn.execute(f"{_SELECT} ORDER BY id").fetchall()
        except sqlite3.DatabaseError as exc:
            if getattr(self, "_conn", None) is not None:
                self._conn.close()
            raise DataError(f"{self.path} is not a readable flexnas archive ({exc}); move it away or "
                            f"point the run at a new folder") from None
        for row in rows:
            rec = self._row_record(row)
            self._by_arch[rec.arch] = rec

    # ---- bookkeeping ----------------------------------------------------------------------------
    def _check_meta(self) -> None:
        meta = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
        want = {"schema": SCHEMA_VERSION, "space": _space_id(self.space)}
        if self.scorer is not None:
            want["scorer"] = self.scorer
        if not meta:
            with self._conn:
                self._conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", want.items())
            return
        if meta.get("schema") != SCHEMA_VERSION:
            raise DataError(f"archive {self.path} has schema version {meta.get('schema')!r}, this flexnas "
                            f"reads version {SCHEMA_VERSION}; start a new run folder")
        if meta.get("space") != want["space"]:
            raise DataError(f"archive {self.path} holds archs of {meta.get('space')}, not {want['space']}; "
                            f"its scores do not apply here: use a new run folder")
        if self.scorer is not None and meta.get("scorer") != self.scorer:
            if meta.get("scorer") is None and not self._conn.execute("SELECT 1 FROM evaluations").fetchone():
                with self._conn:  # an empty archive from an earlier version: adopt it
                    self._conn.execute("INSERT INTO meta (key, value) VALUES ('scorer', ?)", (self.scorer,))
                return
            raise DataError(f"archive {self.path} holds scores from another supernet checkpoint or evaluator "
                            f"setting (or from an older flexnas whose evaluator differed), so they do not "
                            f"apply to this one; move it away (e.g. to {self.path.stem}.old.sqlite) "  # type: ignore[union-attr]
                            f"and search again")

    def _row_record(self, row: tuple) -> Record:
        order, text, choices, metrics, tag, seed = row
        try:
            arch = Arch(self.space.name, tuple(json.loads(choices)))
            values = {str(k): float(v) for k, v in json.loads(metrics).items()}
        except (ValueError, TypeError) as exc:
            raise DataError(f"archive {self.path}: evaluation {order} ({text}) is corrupt: {exc}") from None
        return Record(arch=arch, text=text, metrics=values, order=int(order), tag=tag, seed=seed)

    # ---- queries --------------------------------------------------------------------------------
    def record(self, arch: Arch) -> Optional[Record]:
        return self._by_arch.get(arch)

    def get(self, arch: Arch) -> Optional[dict[str, float]]:
        """The archived metrics of `arch` (a copy), or None if it was never evaluated."""
        rec = self._by_arch.get(arch)
        return None if rec is None else dict(rec.metrics)

    def records(self, tag: Optional[str] = None) -> list[Record]:
        """All records in evaluation order, optionally only those one search (`tag`) produced."""
        return [r for r in self._by_arch.values() if tag is None or r.tag == tag]

    def __len__(self) -> int:
        return len(self._by_arch)

    def __contains__(self, arch: object) -> bool:
        return arch in self._by_arch

    def __iter__(self) -> Iterator[Record]:
        return iter(list(self._by_arch.values()))

    # ---- writes ---------------------------------------------------------------------------------
    def add(self, arch: Arch, metrics: Mapping[str, float], tag: str = "", seed: Optional[int] = None) -> Record:
        """Store one evaluation and commit it. An arch already archived keeps its first metrics (the
        archive is a cache of scores, not a log), and that first record is returned."""
        existing = self._by_arch.get(arch)
        if existing is not None:
            return existing
        text = self.space.encode(arch)  # validates: never archive an arch the space cannot build
        values: dict[str, float] = {}
        for k, v in metrics.items():
            try:
                values[str(k)] = float(v)
            except (TypeError, ValueError):
                raise DataError(f"metric '{k}' of {text} is not a number: {v!r}") from None
        try:
            with self._conn:
                cur = self._conn.execute(
                    "INSERT INTO evaluations (arch, choices, metrics, tag, seed, created) VALUES (?,?,?,?,?,?)",
                    (text, json.dumps(list(arch.choices)), json.dumps(values), tag, seed, time.time()))
            rec = Record(arch=arch, text=text, metrics=values, order=int(cur.lastrowid) - 1, tag=tag, seed=seed)
        except sqlite3.IntegrityError:
            # Another process sharing the file archived this arch first: its score stands.
            rec = self._row_record(self._conn.execute(f"{_SELECT} WHERE arch = ?", (text,)).fetchone())
        self._by_arch[arch] = rec
        return rec

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "Archive":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = "memory" if self.path is None else str(self.path)
        return f"Archive({where}, {self.space.name}, {len(self)} evaluations)"
