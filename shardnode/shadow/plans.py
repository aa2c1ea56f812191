"""Where reversion plans and their progress live: two tables of their own in the shadow's ``shadow.sqlite3``
(one more connection to the history's file; WAL lets it write between the history's transactions).

A plan's items are written in one transaction with the plan row, so a plan exists whole or not at all. The
executor's progress is a cursor over the items (every item before it has its outcome) plus ``inflight``: items up
to there were sent to the node and their outcome is not recorded yet, which is what a crash leaves behind; on resume
those are checked against the node's state instead of being counted as conflicts.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .reversion import PlanCounts, PlanItem, Point

SCHEMA = """
CREATE TABLE IF NOT EXISTS reversion_plans (
    name TEXT PRIMARY KEY,
    request TEXT NOT NULL,          -- the normalised POST body: the same name with another body is refused
    digest TEXT NOT NULL,
    plan_lsn INTEGER NOT NULL,
    point_lsn INTEGER NOT NULL,
    point_time REAL,
    counts TEXT NOT NULL,
    created REAL NOT NULL,
    phase TEXT NOT NULL CHECK (phase IN ('planned', 'running', 'completed', 'failed')),
    cursor INTEGER NOT NULL DEFAULT 0,
    inflight INTEGER NOT NULL DEFAULT 0,
    done INTEGER NOT NULL DEFAULT 0,
    skipped INTEGER NOT NULL DEFAULT 0,
    conflicts INTEGER NOT NULL DEFAULT 0,
    started REAL,
    finished REAL,
    last_error TEXT
);
CREATE TABLE IF NOT EXISTS reversion_items (
    name TEXT NOT NULL,
    seq INTEGER NOT NULL,
    tbl TEXT NOT NULL,
    key TEXT NOT NULL,
    action TEXT NOT NULL,
    expected_lsn INTEGER NOT NULL,
    target_lsn INTEGER NOT NULL,
    size INTEGER NOT NULL,
    outcome TEXT,                   -- NULL until carried out: done | conflict | overwritten | missing | refused
    written_lsn INTEGER,            -- the LSN the node gave our write
    later_lsn INTEGER,              -- first write by someone else after the plan, seen by the capture
    PRIMARY KEY (name, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS reversion_items_by_key ON reversion_items (tbl, key);
"""

ACTIVE = ("planned", "running")
DONE_OUTCOMES = ("done", "overwritten")


@dataclass(frozen=True)
class StoredPlan:
    """A plan row: what was planned and how far the run got."""

    name: str
    request: dict[str, Any]
    digest: str
    plan_lsn: int
    point: Point
    counts: PlanCounts
    created: float
    phase: str
    cursor: int
    inflight: int
    done: int
    skipped: int
    conflicts: int
    started: float | None
    finished: float | None
    last_error: str | None
    base: dict[str, Any] | None = None  # a partition plan's base: {kind: woven|snapshot|none, id, time, lsn}


@dataclass(frozen=True)
class Outcome:
    """What carrying out one item gave: ``result`` done | conflict | overwritten | missing."""

    seq: int
    result: str
    written_lsn: int | None = None
    error: str | None = None


class PlanStore:
    """Plans and items; every method is one short transaction (call from a worker thread)."""

    def __init__(self, path: Path) -> None:
        self._conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(SCHEMA)
        # Files made before partition plans have no base column: added in place (NULL for their plans).
        if "base" not in {r[1] for r in self._conn.execute("PRAGMA table_info(reversion_plans)")}:
            self._conn.execute("ALTER TABLE reversion_plans ADD COLUMN base TEXT")
        self.any_active = self._count_active() > 0

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()

    def _count_active(self) -> int:
        row = self._conn.execute("SELECT count(*) FROM reversion_plans WHERE phase IN (?, ?)", ACTIVE).fetchone()
        return int(row[0])

    # ---- plans ---------------------------------------------------------------------------------
    def create(self, name: str, request: dict[str, Any], digest: str, plan_lsn: int, point: Point,
               counts: PlanCounts, items: Iterable[PlanItem], base: dict[str, Any] | None = None) -> None:
        """Store a new plan and its items in one transaction."""
        with self._lock:
            c = self._conn
            c.execute("BEGIN IMMEDIATE")
            try:
                c.execute("INSERT INTO reversion_plans (name, request, digest, plan_lsn, point_lsn, point_time, "
                          "counts, created, phase, base) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'planned', ?)",
                          (name, json.dumps(request, sort_keys=True), digest, plan_lsn, point.lsn, point.time,
                           json.dumps(counts.to_json()), time.time(), None if base is None else json.dumps(base)))
                c.executemany("INSERT INTO reversion_items (name, seq, tbl, key, action, expected_lsn, target_lsn, "
                              "size) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                              ((name, seq, i.table, i.key, i.action, i.expected_lsn, i.target_lsn, i.size)
                               for seq, i in enumerate(items)))
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
            self.any_active = True

    def get(self, name: str) -> StoredPlan | None:
        """One plan, or None."""
        with self._lock:
            row = self._conn.execute(
                "SELECT name, request, digest, plan_lsn, point_lsn, point_time, counts, created, phase, cursor, "
                "inflight, done, skipped, conflicts, started, finished, last_error, base FROM reversion_plans "
                "WHERE name = ?", (name,)).fetchone()
        if row is None:
            return None
        (name, request, digest, plan_lsn, point_lsn, point_time, counts, created, phase, cursor, inflight, done,
         skipped, conflicts, started, finished, last_error, base) = row
        return StoredPlan(name, json.loads(request), digest, plan_lsn, Point(point_lsn, point_time),
                          PlanCounts(**json.loads(counts)), created, phase, cursor, inflight, done, skipped,
                          conflicts, started, finished, last_error, None if base is None else json.loads(base))

    def names(self, phases: Sequence[str] | None = None) -> list[str]:
        """Plan names (in a phase of ``phases`` when given)."""
        with self._lock:
            if phases is None:
                rows = self._conn.execute("SELECT name FROM reversion_plans ORDER BY name").fetchall()
            else:
                marks = ",".join("?" * len(phases))
                rows = self._conn.execute(f"SELECT name FROM reversion_plans WHERE phase IN ({marks}) ORDER BY name",
                                          tuple(phases)).fetchall()
        return [r[0] for r in rows]

    def items(self, name: str, after: int = -1, limit: int = 100) -> list[PlanItem]:
        """Items in plan order after ``after``."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT tbl, key, action, expected_lsn, target_lsn, size FROM reversion_items "
                "WHERE name = ? AND seq > ? ORDER BY seq LIMIT ?", (name, after, limit)).fetchall()
        return [PlanItem(*r) for r in rows]

    def later_writes(self, name: str) -> int:
        """Items not carried out whose key someone else wrote after the plan (as the capture saw it)."""
        with self._lock:
            row = self._conn.execute("SELECT count(*) FROM reversion_items WHERE name = ? AND outcome IS NULL "
                                     "AND later_lsn IS NOT NULL", (name,)).fetchone()
        return int(row[0])

    def delete(self, name: str) -> bool:
        """Remove a plan and its items; False if there was none."""
        with self._lock:
            c = self._conn
            c.execute("BEGIN IMMEDIATE")
            gone = c.execute("DELETE FROM reversion_plans WHERE name = ?", (name,)).rowcount
            c.execute("DELETE FROM reversion_items WHERE name = ?", (name,))
            c.execute("COMMIT")
            self.any_active = self._count_active() > 0
        return bool(gone)

    # ---- running -------------------------------------------------------------------------------
    def set_phase(self, name: str, phase: str, error: str | None = None) -> None:
        """Move a plan to ``phase`` (running stamps ``started`` once; completed and failed stamp ``finished``)."""
        now = time.time()
        with self._lock:
            self._conn.execute(
                "UPDATE reversion_plans SET phase = ?, last_error = coalesce(?, last_error), "
                "started = CASE WHEN ? = 'running' THEN coalesce(started, ?) ELSE started END, "
                "finished = CASE WHEN ? IN ('completed', 'failed') THEN ? ELSE finished END WHERE name = ?",
                (phase, error, phase, now, phase, now, name))
            self.any_active = self._count_active() > 0

    def next_batch(self, name: str, size: int) -> tuple[list[tuple[int, PlanItem, bool]], int]:
        """The next items to carry out as (seq, item, was_in_flight) and the cursor; marks them in flight first,
        so a crash after the writes leaves them recognisable."""
        with self._lock:
            c = self._conn
            c.execute("BEGIN IMMEDIATE")
            try:
                cursor, inflight = c.execute("SELECT cursor, inflight FROM reversion_plans WHERE name = ?",
                                             (name,)).fetchone()
                rows = c.execute("SELECT seq, tbl, key, action, expected_lsn, target_lsn, size FROM reversion_items "
                                 "WHERE name = ? AND seq >= ? ORDER BY seq LIMIT ?", (name, cursor, size)).fetchall()
                if rows:
                    c.execute("UPDATE reversion_plans SET inflight = max(inflight, ?) WHERE name = ?",
                              (rows[-1][0] + 1, name))
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
        return [(r[0], PlanItem(*r[1:]), r[0] < inflight) for r in rows], cursor

    def finish_batch(self, name: str, outcomes: Sequence[Outcome]) -> None:
        """Record a batch's outcomes and move the cursor past it, in one transaction."""
        if not outcomes:
            return
        done = sum(1 for o in outcomes if o.result in DONE_OUTCOMES)
        conflicts = sum(1 for o in outcomes if o.result in ("conflict", "overwritten"))
        skipped = len(outcomes) - done
        errors = [o.error for o in outcomes if o.error]
        with self._lock:
            c = self._conn
            c.execute("BEGIN IMMEDIATE")
            try:
                # A later write the capture noted that is our own write is no later write at all.
                c.executemany("UPDATE reversion_items SET outcome = ?, written_lsn = ?, later_lsn = CASE WHEN "
                              "later_lsn = ? THEN NULL ELSE later_lsn END WHERE name = ? AND seq = ?",
                              [(o.result, o.written_lsn, o.written_lsn, name, o.seq) for o in outcomes])
                c.execute("UPDATE reversion_plans SET cursor = ?, done = done + ?, skipped = skipped + ?, "
                          "conflicts = conflicts + ?, last_error = coalesce(?, last_error) WHERE name = ?",
                          (max(o.seq for o in outcomes) + 1, done, skipped, conflicts,
                           errors[-1] if errors else None, name))
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise

    # ---- the capture's view ---------------------------------------------------------------------
    def note_writes(self, writes: Iterable[tuple[str, str, int]]) -> None:
        """The capture applied these (table, key, lsn): mark pending items of plans made before them."""
        if not self.any_active:
            return
        with self._lock:
            c = self._conn
            c.execute("BEGIN IMMEDIATE")
            try:
                c.executemany(
                    "UPDATE reversion_items SET later_lsn = ? WHERE tbl = ? AND key = ? AND outcome IS NULL "
                    "AND later_lsn IS NULL AND name IN (SELECT name FROM reversion_plans "
                    "WHERE phase IN ('planned', 'running') AND plan_lsn < ?)",
                    [(lsn, table, key, lsn) for table, key, lsn in writes])
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
