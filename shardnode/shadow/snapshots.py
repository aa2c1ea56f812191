"""Snapshots in the history file: at each interval boundary a row (boundary, LSN, kind, base) and per-key pointers
to the versions that make the state just before the boundary. A ``full`` snapshot points at every live key; a
``differential`` one at the keys changed since its base (a delete's pointer names the tombstone). Decisions (when,
which kind, which are kept) are tiers.py's.

Cost: a differential reads the versions since its base through the (tbl, lsn) index, O(m log m); a full one
groups the whole primary key, O(N). A restore to a snapshot reads one full and at most fullEvery - 1
differentials.
"""

from __future__ import annotations

import sqlite3
import time as _time

from . import tiers
from .tiers import DELETE, DIFFERENTIAL, FULL, SnapshotRef


def _refs(conn: sqlite3.Connection) -> list[SnapshotRef]:
    return [SnapshotRef(*r) for r in conn.execute("SELECT id, boundary, lsn, kind, base FROM snapshots "
                                                  "ORDER BY boundary")]


def _tables(conn: sqlite3.Connection) -> list[str]:
    out: list[str] = []
    row = conn.execute("SELECT tbl FROM frames ORDER BY tbl LIMIT 1").fetchone()
    while row is not None:
        out.append(row[0])
        row = conn.execute("SELECT tbl FROM frames WHERE tbl > ? ORDER BY tbl LIMIT 1", (row[0],)).fetchone()
    return out


def _entries(conn: sqlite3.Connection, kind: str, base_lsn: int, lsn: int) -> list[tuple[str, str, int]]:
    """(table, key, version LSN) pointers of a new snapshot at ``lsn``."""
    out: list[tuple[str, str, int]] = []
    for table in _tables(conn):
        if kind == FULL:
            # SQLite returns the bare column (op) from the row that holds max(lsn).
            rows = conn.execute("SELECT key, max(lsn), op FROM frames WHERE tbl = ? AND lsn <= ? GROUP BY key",
                                (table, lsn))
            out += [(table, k, int(v)) for k, v, op in rows if op != DELETE]
        else:
            rows = conn.execute("SELECT key, max(lsn) FROM frames WHERE tbl = ? AND lsn > ? AND lsn <= ? GROUP BY key",
                                (table, base_lsn, lsn))
            out += [(table, k, int(v)) for k, v in rows]
    return out


def take(conn: sqlite3.Connection, interval: float, full_every: int, granularity: str = DIFFERENTIAL,
         now: float | None = None) -> SnapshotRef | None:
    """Take the snapshot that is due (tiers.due_boundary), inside the caller's transaction; None if none is."""
    row = conn.execute("SELECT time FROM frames ORDER BY time DESC LIMIT 1").fetchone()
    refs = _refs(conn)
    last = refs[-1] if refs else None
    boundary = tiers.due_boundary(last.boundary if last else None, row[0] if row else None, interval)
    if boundary is None:
        return None
    fulls = [r.boundary for r in refs if r.kind == FULL]
    kind = tiers.snapshot_kind(boundary, fulls[-1] if fulls else None, interval, full_every, granularity)
    at = conn.execute("SELECT lsn FROM frames WHERE time < ? ORDER BY time DESC, lsn DESC LIMIT 1",
                      (boundary,)).fetchone()
    lsn = int(at[0]) if at else 0
    base = None if kind == FULL or last is None else last
    entries = _entries(conn, kind, base.lsn if base else 0, lsn)
    cur = conn.execute("INSERT INTO snapshots (boundary, lsn, kind, base, keys, created) VALUES (?, ?, ?, ?, ?, ?)",
                       (boundary, lsn, kind, base.id if base else None, len(entries),
                        _time.time() if now is None else now))
    sid = int(cur.lastrowid or 0)
    conn.executemany("INSERT INTO snapshot_entries (snapshot, tbl, key, lsn) VALUES (?, ?, ?, ?)",
                     [(sid, t, k, v) for t, k, v in entries])
    return SnapshotRef(sid, boundary, lsn, kind, base.id if base else None)


def state(conn: sqlite3.Connection, snapshot_id: int) -> dict[tuple[str, str], int]:
    """The live keys at a snapshot and their version LSNs, read through its chain (full, then differentials)."""
    live: dict[tuple[str, str], int] = {}
    for ref in tiers.restore_chain(_refs(conn), snapshot_id):
        rows = conn.execute("SELECT e.tbl, e.key, e.lsn, f.op FROM snapshot_entries e LEFT JOIN frames f "
                            "ON f.tbl = e.tbl AND f.key = e.key AND f.lsn = e.lsn WHERE e.snapshot = ?", (ref.id,))
        for t, k, lsn, op in rows:
            if op is None:  # compaction keeps what snapshots point to: this is a damaged file
                raise ValueError(f"snapshot {ref.id} points to a version that is not stored ({t}/{k}@{lsn})")
            if op == DELETE:
                live.pop((t, k), None)
            else:
                live[(t, k)] = int(lsn)
    return live


def listing(conn: sqlite3.Connection) -> list[SnapshotRef]:
    """Every stored snapshot, oldest first."""
    return _refs(conn)
