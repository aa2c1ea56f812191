"""``weave.sqlite3`` on the shard volume (docs/weaving.md, "Woven store"): the partition samples, the weaves, the woven
snapshots (points) with their zstd pages of rows, the calibrators. This module owns the schema; every function is
one transaction on the store's single connection (guarded by a lock: the weaver's runner writes, its API reads).

``woven_versions`` (woven, key_version, rows) is an addition to the contract's tables, kept in the point's own
transaction: ``GET /v1/keys`` counts woven rows per key version without decompressing pages.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .pages import Row, decode_page, encode_pages, fold

DB_NAME = "weave.sqlite3"
SCHEMA_VERSION = 1
ACTIVE, SUPERSEDED, DROPPED = "active", "superseded", "dropped"
FULL, DIFFERENTIAL = "full", "differential"
LOWER, UPPER = "lower", "upper"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS samples (partition INTEGER NOT NULL, time REAL NOT NULL, bytes INTEGER NOT NULL,
    blocks INTEGER NOT NULL, writes INTEGER NOT NULL, reads INTEGER NOT NULL, PRIMARY KEY (partition, time));
CREATE TABLE IF NOT EXISTS weaves (id TEXT PRIMARY KEY, partition INTEGER NOT NULL, split_key INTEGER NOT NULL,
    lower_start INTEGER NOT NULL, lower_end INTEGER NOT NULL, upper_start INTEGER NOT NULL, upper_end INTEGER NOT NULL,
    confidence REAL NOT NULL, predicted_time REAL, window_seconds REAL NOT NULL, created REAL NOT NULL,
    state TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS weaves_partition ON weaves (partition, state);
CREATE TABLE IF NOT EXISTS woven (id INTEGER PRIMARY KEY, weave TEXT NOT NULL, half TEXT NOT NULL,
    point_time REAL NOT NULL, lsn INTEGER NOT NULL, kind TEXT NOT NULL, base INTEGER, source_snapshot INTEGER,
    rows INTEGER NOT NULL, bytes INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS woven_weave ON woven (weave, half, point_time);
CREATE TABLE IF NOT EXISTS woven_pages (woven INTEGER NOT NULL, page INTEGER NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (woven, page));
CREATE TABLE IF NOT EXISTS woven_versions (woven INTEGER NOT NULL, key_version INTEGER NOT NULL,
    rows INTEGER NOT NULL, PRIMARY KEY (woven, key_version));
CREATE TABLE IF NOT EXISTS calibration (partition INTEGER NOT NULL, model TEXT NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (partition, model));
"""

# Keyspace ids are unsigned 64-bit; SQLite integers are signed: stored shifted, as the node does.
OFFSET = 1 << 63


class SchemaError(RuntimeError):
    """The file was written by a newer version of this code."""


@dataclass(frozen=True)
class Weave:
    """One weave: a predicted split of ``partition`` at ``split_key`` and the ranges of its halves (inclusive)."""

    id: str
    partition: int
    split_key: int
    lower: tuple[int, int]
    upper: tuple[int, int]
    confidence: float
    predicted_time: float | None
    window_seconds: float
    created: float
    state: str

    def range_of(self, half: str) -> tuple[int, int]:
        """The keyspace range of ``half``."""
        return self.lower if half == LOWER else self.upper


@dataclass(frozen=True)
class Point:
    """One woven snapshot: one half of a weave at one point (a shadow snapshot boundary)."""

    id: int
    weave: str
    half: str
    point_time: float
    lsn: int
    kind: str
    base: int | None
    source_snapshot: int | None
    rows: int
    bytes: int


_WEAVE_COLS = ("id, partition, split_key, lower_start, lower_end, upper_start, upper_end, confidence, predicted_time, "
               "window_seconds, created, state")
_POINT_COLS = "id, weave, half, point_time, lsn, kind, base, source_snapshot, rows, bytes"


def _weave(r: Sequence[Any]) -> Weave:
    return Weave(r[0], int(r[1]), int(r[2]) + OFFSET, (int(r[3]) + OFFSET, int(r[4]) + OFFSET),
                 (int(r[5]) + OFFSET, int(r[6]) + OFFSET), float(r[7]), r[8], float(r[9]), float(r[10]), r[11])


def _point(r: Sequence[Any]) -> Point:
    return Point(int(r[0]), r[1], r[2], float(r[3]), int(r[4]), r[5], r[6], r[7], int(r[8]), int(r[9]))


class WeaveStore:
    """The open ``weave.sqlite3``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")  # a point and its pages survive kill -9 together
        self.lock = threading.Lock()
        with self.tx() as c:
            has_meta = c.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone()
            row = c.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone() if has_meta else None
            if row is not None and int(json.loads(row[0])) > SCHEMA_VERSION:
                raise SchemaError(f"{path} has schema version {row[0]}; this code knows up to {SCHEMA_VERSION}")
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    c.execute(statement)
            if row is None:
                c.execute("INSERT INTO meta (name, value) VALUES ('schema', ?)", (json.dumps(SCHEMA_VERSION),))

    def close(self) -> None:
        """Close the connection."""
        with self.lock:
            self.conn.close()

    @contextlib.contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One transaction under the lock (committed on success, rolled back on error)."""
        with self.lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    # ---- meta ---------------------------------------------------------------------------------------------
    def get_meta(self, name: str, default: Any = None) -> Any:
        """A JSON value from ``meta``."""
        with self.tx() as c:
            row = c.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return json.loads(row[0]) if row else default

    def set_meta(self, name: str, value: Any) -> None:
        """Write a JSON value to ``meta``."""
        with self.tx() as c:
            c.execute("INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET "
                      "value = excluded.value", (name, json.dumps(value)))

    # ---- samples ------------------------------------------------------------------------------------------
    def add_samples(self, time: float, rows: Iterable[tuple[int, int, int, int, int]], keep_after: float) -> None:
        """One sample (partition, bytes, blocks, writes, reads) per partition at ``time``; older than
        ``keep_after`` dropped in the same transaction."""
        with self.tx() as c:
            c.executemany("INSERT OR REPLACE INTO samples (partition, time, bytes, blocks, writes, reads) "
                          "VALUES (?, ?, ?, ?, ?, ?)", [(p, time, b, n, w, r) for p, b, n, w, r in rows])
            c.execute("DELETE FROM samples WHERE time < ?", (keep_after,))

    def samples(self, partition: int, since: float = 0.0, limit: int | None = None
                ) -> list[tuple[float, int, int, int, int]]:
        """(time, bytes, blocks, writes, reads) of a partition after ``since``, oldest first (the newest
        ``limit`` when given)."""
        with self.tx() as c:
            if limit is None:
                rows = c.execute("SELECT time, bytes, blocks, writes, reads FROM samples WHERE partition = ? AND "
                                 "time > ? ORDER BY time", (partition, since)).fetchall()
            else:
                rows = c.execute("SELECT time, bytes, blocks, writes, reads FROM samples WHERE partition = ? AND "
                                 "time > ? ORDER BY time DESC LIMIT ?", (partition, since, limit)).fetchall()[::-1]
        return [(float(t), int(b), int(n), int(w), int(r)) for t, b, n, w, r in rows]

    def sampled_partitions(self, since: float) -> list[int]:
        """Partitions with a sample after ``since``."""
        with self.tx() as c:
            return [int(p) for (p,) in c.execute("SELECT DISTINCT partition FROM samples WHERE time > ?", (since,))]

    # ---- weaves -------------------------------------------------------------------------------------------
    def add_weave(self, w: Weave) -> None:
        """Record a new weave."""
        with self.tx() as c:
            c.execute(f"INSERT INTO weaves ({_WEAVE_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      (w.id, w.partition, w.split_key - OFFSET, w.lower[0] - OFFSET, w.lower[1] - OFFSET,
                       w.upper[0] - OFFSET, w.upper[1] - OFFSET, w.confidence, w.predicted_time, w.window_seconds,
                       w.created, w.state))

    def update_forecast(self, weave_id: str, confidence: float, predicted_time: float | None) -> None:
        """A continuing weave's latest forecast."""
        with self.tx() as c:
            c.execute("UPDATE weaves SET confidence = ?, predicted_time = ? WHERE id = ?",
                      (confidence, predicted_time, weave_id))

    def weaves(self, state: str | None = ACTIVE) -> list[Weave]:
        """Weaves in ``state`` (None: all), oldest first."""
        with self.tx() as c:
            if state is None:
                rows = c.execute(f"SELECT {_WEAVE_COLS} FROM weaves ORDER BY created").fetchall()
            else:
                rows = c.execute(f"SELECT {_WEAVE_COLS} FROM weaves WHERE state = ? ORDER BY created",
                                 (state,)).fetchall()
        return [_weave(r) for r in rows]

    def weave(self, weave_id: str) -> Weave | None:
        """One weave."""
        with self.tx() as c:
            r = c.execute(f"SELECT {_WEAVE_COLS} FROM weaves WHERE id = ?", (weave_id,)).fetchone()
        return None if r is None else _weave(r)

    def retire_weave(self, weave_id: str, state: str) -> None:
        """Mark a weave superseded or dropped and delete its points (the metadata row stays, for the status)."""
        with self.tx() as c:
            ids = [int(i) for (i,) in c.execute("SELECT id FROM woven WHERE weave = ?", (weave_id,))]
            _delete_points(c, ids)
            c.execute("UPDATE weaves SET state = ? WHERE id = ?", (state, weave_id))

    # ---- points -------------------------------------------------------------------------------------------
    def add_points(self, items: Sequence[tuple[str, str, float, int, str, int | None, int | None, Sequence[Row]]]
                   ) -> list[Point]:
        """Store woven snapshots — each (weave, half, point_time, lsn, kind, base, source_snapshot, rows in (tbl, key)
        order) — with their pages, in one transaction (both halves of a point land together)."""
        encoded = [(item, encode_pages(item[7]), _version_rows(item[7])) for item in items]
        out: list[Point] = []
        with self.tx() as c:
            for (weave_id, half, point_time, lsn, kind, base, source, rows), pages, versions in encoded:
                size = sum(len(p) for p in pages)
                cur = c.execute("INSERT INTO woven (weave, half, point_time, lsn, kind, base, source_snapshot, rows, "
                                "bytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                (weave_id, half, point_time, lsn, kind, base, source, len(rows), size))
                pid = int(cur.lastrowid or 0)
                c.executemany("INSERT INTO woven_pages (woven, page, data) VALUES (?, ?, ?)",
                              [(pid, i, p) for i, p in enumerate(pages)])
                c.executemany("INSERT INTO woven_versions (woven, key_version, rows) VALUES (?, ?, ?)",
                              [(pid, v, n) for v, n in versions.items()])
                out.append(Point(pid, weave_id, half, point_time, lsn, kind, base, source, len(rows), size))
        return out

    def points(self, weave_id: str | None = None) -> list[Point]:
        """The points of one weave (None: of every weave), by weave, half and time."""
        with self.tx() as c:
            if weave_id is None:
                rows = c.execute(f"SELECT {_POINT_COLS} FROM woven ORDER BY weave, half, point_time").fetchall()
            else:
                rows = c.execute(f"SELECT {_POINT_COLS} FROM woven WHERE weave = ? ORDER BY half, point_time",
                                 (weave_id,)).fetchall()
        return [_point(r) for r in rows]

    def point(self, point_id: int) -> Point | None:
        """One point."""
        with self.tx() as c:
            r = c.execute(f"SELECT {_POINT_COLS} FROM woven WHERE id = ?", (point_id,)).fetchone()
        return None if r is None else _point(r)

    def point_rows(self, point_id: int) -> list[Row]:
        """The rows stored for one point (its own: a differential holds only what changed)."""
        with self.tx() as c:
            pages = [bytes(d) for (d,) in c.execute("SELECT data FROM woven_pages WHERE woven = ? ORDER BY page",
                                                    (point_id,))]
        return [r for p in pages for r in decode_page(p)]

    def chain(self, point_id: int) -> list[Point]:
        """The point's chain: its full base first, then the differentials up to it."""
        out: list[Point] = []
        at: int | None = point_id
        while at is not None:
            p = self.point(at)
            if p is None:
                raise ValueError(f"woven snapshot {point_id}'s chain is broken at {at}")
            out.append(p)
            at = p.base if p.kind == DIFFERENTIAL else None
        return out[::-1]

    def state(self, point_id: int) -> dict[tuple[str, str], Row]:
        """The live keys of a half at a point: the full base, then each differential (a delete removes)."""
        live: dict[tuple[str, str], Row] = {}
        for p in self.chain(point_id):
            for r in self.point_rows(p.id):
                if r.op == "delete":
                    live.pop((r.tbl, r.key), None)
                else:
                    live[(r.tbl, r.key)] = r
        return live

    def apply_retention(self, materialize: Sequence[int], drop: Sequence[int]) -> None:
        """Turn each point of ``materialize`` into a full one holding its whole state, then delete ``drop``, in one
        transaction (the states are read first, while the points they depend on still exist). The usual case — a
        differential right after its full base, which goes — folds the differential into the base's pages, so only
        the pages its keys fall in are rewritten."""
        encoded = {m: self._materialized(m) for m in materialize}
        with self.tx() as c:
            for m, (pages, versions, n) in encoded.items():
                c.execute("DELETE FROM woven_pages WHERE woven = ?", (m,))
                c.execute("DELETE FROM woven_versions WHERE woven = ?", (m,))
                c.executemany("INSERT INTO woven_pages (woven, page, data) VALUES (?, ?, ?)",
                              [(m, i, p) for i, p in enumerate(pages)])
                c.executemany("INSERT INTO woven_versions (woven, key_version, rows) VALUES (?, ?, ?)",
                              [(m, v, k) for v, k in versions.items() if k])
                c.execute("UPDATE woven SET kind = ?, base = NULL, rows = ?, bytes = ? WHERE id = ?",
                          (FULL, n, sum(len(p) for p in pages), m))
            _delete_points(c, drop)

    def _materialized(self, point_id: int) -> tuple[list[bytes], dict[int, int], int]:
        """A point's whole state as pages, rows per key version and row count: the differentials of its chain merged
        (the newest row of each key wins, a delete included) and folded into the full base's pages."""
        chain = self.chain(point_id)
        base = chain[0]
        changes: dict[tuple[str, str], Row] = {}
        for p in chain[1:]:
            for r in self.point_rows(p.id):
                changes[(r.tbl, r.key)] = r
        with self.tx() as c:
            pages = [bytes(d) for (d,) in c.execute("SELECT data FROM woven_pages WHERE woven = ? ORDER BY page",
                                                    (base.id,))]
            versions = {int(v): int(n) for v, n in c.execute(
                "SELECT key_version, rows FROM woven_versions WHERE woven = ?", (base.id,))}
        folded, delta, changed = fold(pages, [changes[k] for k in sorted(changes)])
        for v, n in changed.items():
            versions[v] = versions.get(v, 0) + n
        return folded, versions, base.rows + delta

    def delete_points(self, ids: Sequence[int]) -> None:
        """Delete points and their pages."""
        with self.tx() as c:
            _delete_points(c, ids)

    def version_counts(self) -> dict[int, int]:
        """Woven rows per key version (deletes hold none)."""
        with self.tx() as c:
            return {int(v): int(n) for v, n in c.execute(
                "SELECT key_version, sum(rows) FROM woven_versions GROUP BY key_version")}

    def points_with_versions_other_than(self, keep: int) -> list[int]:
        """Points holding any row sealed under a key version other than ``keep``."""
        with self.tx() as c:
            return [int(i) for (i,) in c.execute("SELECT DISTINCT woven FROM woven_versions WHERE key_version != ?",
                                                  (keep,))]

    def total_bytes(self) -> int:
        """Stored bytes of every page."""
        with self.tx() as c:
            return int(c.execute("SELECT coalesce(sum(bytes), 0) FROM woven").fetchone()[0])

    # ---- calibration --------------------------------------------------------------------------------------
    def save_calibration(self, partition: int, model: str, data: dict[str, Any]) -> None:
        """Persist a partition's calibrator."""
        with self.tx() as c:
            c.execute("INSERT OR REPLACE INTO calibration (partition, model, data) VALUES (?, ?, ?)",
                      (partition, model, json.dumps(data)))

    def calibration(self, partition: int, model: str) -> dict[str, Any] | None:
        """A partition's stored calibrator."""
        with self.tx() as c:
            row = c.execute("SELECT data FROM calibration WHERE partition = ? AND model = ?",
                            (partition, model)).fetchone()
        return None if row is None else dict(json.loads(row[0]))


def _delete_points(c: sqlite3.Connection, ids: Sequence[int]) -> None:
    for i in ids:
        c.execute("DELETE FROM woven_pages WHERE woven = ?", (i,))
        c.execute("DELETE FROM woven_versions WHERE woven = ?", (i,))
        c.execute("DELETE FROM woven WHERE id = ?", (i,))


def _version_rows(rows: Iterable[Row]) -> dict[int, int]:
    versions: dict[int, int] = {}
    for r in rows:
        if r.key_version is not None:
            versions[r.key_version] = versions.get(r.key_version, 0) + 1
    return versions
