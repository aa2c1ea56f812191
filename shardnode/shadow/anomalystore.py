"""Where anomaly detection keeps its state on the shard volume: tables of their own in ``shadow.sqlite3`` (one more
connection to the history's file, like the reversion plans).

- ``anomaly_windows``: every closed window per table (its features, score, detector, drivers): the training set of
  the table's model and the timeline the console draws. Trimmed to the training window (at least a day).
- ``anomaly_incidents`` / ``anomaly_incident_keys``: each incident (its JSON) and the keys it touched, bounded to
  the newest ``MAX_INCIDENTS``.
- ``anomaly_models``: the table's fitted model state (JSON) with its sha256, so a restarted shadow scores with the
  same model and a corrupt one is noticed (the detector falls back to rules, docs/anomalies.md).
- ``anomaly_progress``: per table, the end of the last closed window and the capture LSN it was closed at.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chronoshard.shardnode.anomaly.types import AffectedKey

from .historydb import connect

SCHEMA = """
CREATE TABLE IF NOT EXISTS anomaly_windows (
    tbl TEXT NOT NULL,
    start REAL NOT NULL,
    end_time REAL NOT NULL,
    features TEXT NOT NULL,        -- JSON {name: value}
    score REAL NOT NULL,
    detector TEXT NOT NULL,
    drivers TEXT NOT NULL,         -- JSON [{feature, value, usual, weight}]
    incident TEXT,                 -- the incident the window belongs to (score at or above the threshold)
    PRIMARY KEY (tbl, start)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS anomaly_incidents (
    id TEXT PRIMARY KEY,
    tbl TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('open', 'closed')),
    detected REAL NOT NULL,
    updated REAL NOT NULL,
    body TEXT NOT NULL             -- the incident's JSON as GET /v1/anomalies answers it (without its keys)
);
CREATE INDEX IF NOT EXISTS anomaly_incidents_by_time ON anomaly_incidents (detected);
CREATE TABLE IF NOT EXISTS anomaly_incident_keys (
    id TEXT NOT NULL,
    key TEXT NOT NULL,
    first_lsn INTEGER NOT NULL,
    last_lsn INTEGER NOT NULL,
    before_lsn INTEGER,
    bytes INTEGER NOT NULL,
    PRIMARY KEY (id, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS anomaly_models (
    tbl TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    checksum TEXT NOT NULL,
    trained_at REAL NOT NULL,
    windows INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS anomaly_progress (
    tbl TEXT PRIMARY KEY,
    closed_through REAL NOT NULL,  -- every window ending at or before this time is closed
    lsn INTEGER NOT NULL           -- the capture position when it was
);
"""

MAX_INCIDENTS = 1000
MIN_WINDOW_RETENTION_SECONDS = 86400.0


@dataclass(frozen=True)
class StoredWindow:
    """One closed window as stored."""

    table: str
    start: float
    end: float
    features: dict[str, float]
    score: float
    detector: str
    drivers: list[dict[str, Any]]
    incident: str | None

    def to_json(self) -> dict[str, Any]:
        """The window as ``GET /v1/tables/{table}/anomalies`` lists it."""
        return {"start": self.start, "end": self.end, "score": self.score, "detector": self.detector,
                "features": self.features, "drivers": self.drivers, "incident": self.incident}


@dataclass(frozen=True)
class StoredModel:
    """A table's model state, whether its checksum still matches, and when and on how many windows it was fit."""

    table: str
    state: dict[str, Any] | None  # None: the stored text is not JSON
    intact: bool
    trained_at: float
    windows: int


def _checksum(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class AnomalyStore:
    """The anomaly tables behind one connection (thread-safe: one lock, short transactions)."""

    def __init__(self, path: Path) -> None:
        self._conn = connect(path)
        self._lock = threading.Lock()
        with self._lock, self._conn:
            self._conn.executescript(SCHEMA)

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()

    # ---- windows -------------------------------------------------------------------------------
    def add_windows(self, rows: Iterable[StoredWindow], progress: dict[str, tuple[float, int]]) -> None:
        """Store closed windows and move each table's progress, in one transaction."""
        with self._lock, self._conn:
            self._conn.executemany(
                "INSERT OR REPLACE INTO anomaly_windows (tbl, start, end_time, features, score, detector, drivers, "
                "incident) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(w.table, w.start, w.end, json.dumps(w.features), w.score, w.detector, json.dumps(w.drivers),
                  w.incident) for w in rows])
            self._conn.executemany(
                "INSERT OR REPLACE INTO anomaly_progress (tbl, closed_through, lsn) VALUES (?, ?, ?)",
                [(t, end, lsn) for t, (end, lsn) in progress.items()])

    def windows(self, table: str, start: float | None = None, end: float | None = None,
                limit: int = 10_000) -> list[StoredWindow]:
        """The table's closed windows overlapping [start, end), oldest first (the newest ``limit`` of them)."""
        lo = float("-inf") if start is None else start
        hi = float("inf") if end is None else end
        with self._lock:
            rows = self._conn.execute(
                "SELECT tbl, start, end_time, features, score, detector, drivers, incident FROM anomaly_windows "
                "WHERE tbl = ? AND end_time > ? AND start < ? ORDER BY start DESC LIMIT ?",
                (table, lo, hi, limit)).fetchall()
        return [StoredWindow(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5], json.loads(r[6]), r[7])
                for r in reversed(rows)]

    def trim_windows(self, before: float) -> int:
        """Forget windows that ended before ``before``; returns how many."""
        with self._lock, self._conn:
            return self._conn.execute("DELETE FROM anomaly_windows WHERE end_time < ?", (before,)).rowcount

    def progress(self) -> dict[str, tuple[float, int]]:
        """Per table: (closed_through, capture LSN then)."""
        with self._lock:
            return {str(t): (float(c), int(lsn)) for t, c, lsn in
                    self._conn.execute("SELECT tbl, closed_through, lsn FROM anomaly_progress")}

    # ---- incidents -----------------------------------------------------------------------------
    def put_incident(self, body: dict[str, Any], keys: Iterable[AffectedKey], now: float) -> None:
        """Store (or replace) an incident and its keys in one transaction; trims to ``MAX_INCIDENTS``."""
        ident = str(body["id"])
        with self._lock, self._conn:
            self._conn.execute(
                "INSERT INTO anomaly_incidents (id, tbl, state, detected, updated, body) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET state = excluded.state, updated = excluded.updated, "
                "body = excluded.body",
                (ident, body["table"], body["state"], body["detectedTime"], now, json.dumps(body)))
            self._conn.execute("DELETE FROM anomaly_incident_keys WHERE id = ?", (ident,))
            self._conn.executemany(
                "INSERT OR REPLACE INTO anomaly_incident_keys (id, key, first_lsn, last_lsn, before_lsn, bytes) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(ident, k.key, k.first_lsn, k.last_lsn, k.before_lsn, k.bytes) for k in keys])
            old = [r[0] for r in self._conn.execute(
                "SELECT id FROM anomaly_incidents ORDER BY detected DESC LIMIT -1 OFFSET ?", (MAX_INCIDENTS,))]
            for gone in old:
                self._conn.execute("DELETE FROM anomaly_incidents WHERE id = ?", (gone,))
                self._conn.execute("DELETE FROM anomaly_incident_keys WHERE id = ?", (gone,))

    def incidents(self, table: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Incidents newest first (of one table, or all)."""
        where, args = ("WHERE tbl = ?", [table]) if table is not None else ("", [])
        with self._lock:
            rows = self._conn.execute(f"SELECT body FROM anomaly_incidents {where} ORDER BY detected DESC, id "
                                      "LIMIT ?", (*args, limit)).fetchall()
        return [json.loads(r[0]) for r in rows]

    def incident(self, ident: str) -> dict[str, Any] | None:
        """One incident's JSON (None if unknown)."""
        with self._lock:
            row = self._conn.execute("SELECT body FROM anomaly_incidents WHERE id = ?", (ident,)).fetchone()
        return None if row is None else json.loads(row[0])

    def incident_keys(self, ident: str, after: str | None = None, limit: int = 1000) -> list[AffectedKey]:
        """An incident's keys in key order, from after ``after``."""
        table = (self.incident(ident) or {}).get("table", "")
        with self._lock:
            rows = self._conn.execute(
                "SELECT key, first_lsn, last_lsn, before_lsn, bytes FROM anomaly_incident_keys WHERE id = ? "
                "AND key > ? ORDER BY key LIMIT ?", (ident, after or "", limit)).fetchall()
        return [AffectedKey(table, r[0], r[1], r[2], r[3], r[4]) for r in rows]

    def all_incident_keys(self, ident: str) -> Iterator[AffectedKey]:
        """Every key of an incident, in key order, page by page."""
        after: str | None = None
        while True:
            page = self.incident_keys(ident, after, 1000)
            yield from page
            if len(page) < 1000:
                return
            after = page[-1].key

    # ---- models --------------------------------------------------------------------------------
    def save_model(self, table: str, state: dict[str, Any], trained_at: float, windows: int) -> None:
        """Store a table's fitted model with its checksum."""
        text = json.dumps(state, sort_keys=True)
        with self._lock, self._conn:
            self._conn.execute("INSERT OR REPLACE INTO anomaly_models (tbl, state, checksum, trained_at, windows) "
                               "VALUES (?, ?, ?, ?, ?)", (table, text, _checksum(text), trained_at, windows))

    def load_model(self, table: str) -> StoredModel | None:
        """A table's stored model (``intact`` False when the checksum or the JSON does not hold)."""
        with self._lock:
            row = self._conn.execute("SELECT state, checksum, trained_at, windows FROM anomaly_models "
                                     "WHERE tbl = ?", (table,)).fetchone()
        if row is None:
            return None
        text, checksum, trained_at, windows = row
        try:
            state = json.loads(text)
        except ValueError:
            return StoredModel(table, None, False, float(trained_at), int(windows))
        intact = isinstance(state, dict) and _checksum(str(text)) == checksum
        return StoredModel(table, state if isinstance(state, dict) else None, intact, float(trained_at),
                           int(windows))
